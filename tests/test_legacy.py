"""`python -m effdet.legacy`: the seed's main.py flags become run.py overrides that compose and validate."""
import subprocess
import sys

import pytest

from effdet.config import validate
from effdet.errors import ConfigError
from effdet.legacy import FLAGS, HPARAMS, translate
from tests.conftest import REPO, compose


def test_a_habana_script_of_the_seed_translates_to_overrides_that_compose():
    overrides = translate([
        "--mode=train_and_eval", "--model_name=efficientdet-d0", "--train_batch_size=8", "--eval_batch_size", "4",
        "--num_epochs=300", "--num_examples_per_epoch=117266", "--training_file_pattern=/d/train-*",
        "--validation_file_pattern=/d/val-*", "--val_json_file=/d/instances_val2017.json", "--model_dir=/runs/d0",
        "--backbone_ckpt=/ckpt/efficientnet-b0", "--cp_every_n_steps=500", "--keep_checkpoint_max=3",
        "--log_every_n_steps=50", "--iterations_per_loop=10", "--noeval_after_training", "--eval_samples=500",
        "--eval_timeout=600", "--min_eval_interval=60", "--use_amp", "--deterministic", "--use_horovod", "4",
        "--hls_type=HLS1-H",
        "--hparams=image_size=640,moving_average_decay=0.999,nms_configs.method=gaussian,grad_checkpoint=True"])
    assert overrides == [
        "hardware=hls1h", "hardware.num_workers=4", "mode=train_and_eval", "model=efficientdet-d0",
        "trainer.batch_size=8", "eval.batch_size=4", "trainer.num_epochs=300", "data.num_examples_per_epoch=117266",
        "data.train_file_pattern=/d/train-*", "data.val_file_pattern=/d/val-*",
        "data.val_json_file=/d/instances_val2017.json", "hydra.run.dir=/runs/d0",
        "trainer.backbone_ckpt=/ckpt/efficientnet-b0", "trainer.checkpoint_every_n_steps=500",
        "trainer.keep_checkpoint_max=3", "trainer.log_every_n_steps=50", "trainer.steps_per_loop=10",
        "trainer.eval_after_training=false", "eval.samples=500", "eval.timeout=600", "eval.min_interval=60",
        "trainer.precision=mixed_bfloat16", "trainer.deterministic=true", "data.deterministic=true",
        "model.image_size=640", "trainer.ema_decay=0.999", "eval.nms=soft", "trainer.recompute=backbone"]
    cfg = compose([o for o in overrides if not o.startswith("hydra.")] + ["data=coco"])
    validate(cfg)
    assert cfg.hardware.num_workers == 4 and cfg.trainer.precision == "mixed_bfloat16"


def test_off_gaudi_flags_and_the_seeds_eval_mode():
    overrides = translate(["--no_hpu", "--use_fake_data", "--use_horovod=2", "--mode=eval", "--use_xla",
                           "--kubernetes_run", "--testdev_dir=/out", "--ckpt=/c", "--dataset_dir=/d"])
    assert overrides == ["hardware=cpu", "data=fake", "hardware.num_workers=2", "mode=eval", "eval.continuous=true",
                         "trainer.xla=true", "hardware.launcher=none", "eval.testdev_dir=/out", "trainer.ckpt=/c",
                         "data.train_file_pattern=/d/train-*", "data.val_file_pattern=/d/val-*"]
    assert translate(["--no_hpu", "--use_amp"]) == ["hardware=cpu", "trainer.precision=mixed_float16"]


def test_every_hparam_and_flag_maps_to_a_key_of_the_config():
    cfg = compose()
    for key in HPARAMS.values():
        node, _, leaf = key.rpartition(".")
        assert leaf in _select(cfg, node), key
    assert len(FLAGS) == 31


def _select(cfg, dotted):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, dotted)


@pytest.mark.parametrize("argv, message", [
    (["--tpu=grpc://x"], "--tpu: a TPU flag, which has no meaning here"),
    (["--strategy=tpu"], "--strategy: a TPU flag"),
    (["--mdoel_name=efficientdet-d0"], "did you mean --model_name?"),
    (["--hparams=learning_rat=0.1"], "'learning_rat' has no equivalent here; did you mean 'learning_rate'?"),
    (["--hls_type=HLS2"], "choose one of HLS1, HLS1-H"),
    (["--mode=predict"], "train, eval and train_and_eval"),
    (["--num_epochs"], "--num_epochs needs a value"),
])
def test_unknown_and_tpu_flags_are_refused_in_one_line(argv, message):
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace("(", r"\(")):
        translate(argv)


def test_the_front_door_prints_the_command_and_refuses_with_exit_code_2():
    shown = subprocess.run([sys.executable, "-m", "effdet.legacy", "--no_hpu", "--model_name=efficientdet-d2",
                            "--print_only"], capture_output=True, text=True, cwd=REPO)
    assert shown.returncode == 0 and shown.stdout.strip() == "python run.py hardware=cpu model=efficientdet-d2"
    refused = subprocess.run([sys.executable, "-m", "effdet.legacy", "--use_tpu"], capture_output=True, text=True,
                             cwd=REPO)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "TPU flag" in refused.stderr
