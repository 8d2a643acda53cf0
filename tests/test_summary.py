"""The end-of-run summary: what it lists comes from the run dir, and its next commands carry what they need.
(tests/test_run.py runs a printed command; tests/test_sweep.py checks a sweep's one summary.)"""
import shlex
import sys

from effdet.summary import artifacts_of, carried_overrides, latest_val_pictures, next_commands, run_summary
from tests.conftest import REPO, compose


def test_the_next_commands_repeat_the_model_data_and_eval_overrides_only():
    overrides = ["model=efficientdet-d0", "model.image_size=256", "data=voc", "+experiment=shapes_quick",
                 "eval.nms=soft", "eval.every_n_epochs=2", "eval.ckpt=/x", "trainer.batch_size=4", "optimizer=adam",
                 "mode=train_and_eval", "hydra.run.dir=/runs/a", "hardware.num_workers=2", "~data.cache_dir"]
    assert carried_overrides(overrides) == ["model=efficientdet-d0", "model.image_size=256", "data=voc",
                                            "+experiment=shapes_quick", "eval.nms=soft", "~data.cache_dir"]


def _run_dir(tmp_path, *files):
    for name in files:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    return tmp_path


def test_a_training_run_is_followed_by_eval_infer_export_and_tensorboard_on_its_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    run_dir = _run_dir(tmp_path, "checkpoints/checkpoint", "tensorboard/events.x")
    commands = next_commands("train", str(run_dir), compose([]), ["model.image_size=96", "trainer.batch_size=2"])
    assert [shlex.split(line)[:3] for line in commands[:3]] == [
        [shlex.split(line)[0], "run.py", mode] for line, mode in zip(commands, ("mode=eval", "mode=infer",
                                                                                "mode=export"))]
    assert shlex.split(commands[0])[2:] == ["mode=eval", f"eval.ckpt={run_dir}", "model.image_size=96"]
    assert commands[-1] == f"tensorboard --logdir {run_dir / 'tensorboard'}"
    assert shlex.split(commands[0])[0] in (sys.executable, ".venv/bin/python")
    # no checkpoint yet (a run stopped before its first): nothing to evaluate
    assert next_commands("train", str(tmp_path / "empty"), compose([]), []) == []


def test_an_evaluation_is_followed_by_infer_and_export_of_the_checkpoint_it_evaluated(tmp_path):
    cfg = compose([f"eval.ckpt={tmp_path / 'trained'}"])
    commands = next_commands("eval", str(tmp_path / "eval-run"), cfg, [f"eval.ckpt={tmp_path / 'trained'}"])
    assert [shlex.split(line)[2:4] for line in commands] == [
        ["mode=infer", f"infer.ckpt={tmp_path / 'trained'}"], ["mode=export", f"export.ckpt={tmp_path / 'trained'}"]]


def test_an_export_is_followed_by_the_evaluation_of_each_network_file_it_wrote(tmp_path):
    run_dir = _run_dir(tmp_path, "model_int8.tflite", "model.onnx", "saved_model/saved_model.pb")
    cfg = compose([f"export.ckpt={tmp_path / 'trained'}"])
    evals = [shlex.split(line)[2:] for line in next_commands("export", str(run_dir), cfg, []) if "mode=eval" in line]
    assert evals == [
        ["mode=eval", f"eval.ckpt={tmp_path / 'trained'}"],  # the checkpoint: what the SavedModel detects
        ["mode=eval", f"eval.ckpt={tmp_path / 'trained'}", "eval.engine=tflite",
         f"eval.tflite_quantize={run_dir / 'model_int8.tflite'}"],
        ["mode=eval", f"eval.ckpt={tmp_path / 'trained'}", "eval.engine=onnxruntime",
         f"eval.onnx_file={run_dir / 'model.onnx'}"]]


def test_it_lists_what_the_run_dir_holds_and_the_latest_evaluations_picture(tmp_path):
    run_dir = _run_dir(tmp_path, "checkpoints/checkpoint", "metrics.jsonl", "eval/step_9/val_detections.png",
                       "eval/step_10/val_detections.png", "eval/step_11/metrics.json", "run.log")
    (run_dir / "tensorboard").mkdir()  # empty: not shown
    (run_dir / "metrics.jsonl").write_text('{"step": 10, "AP": 0.25, "AP50": 0.5}\n')
    assert latest_val_pictures(str(run_dir)) == str(run_dir / "eval" / "step_10" / "val_detections.png")
    listed = [path for path, _ in artifacts_of(str(run_dir), compose([]))]
    assert listed == ["checkpoints/", "metrics.jsonl", "eval/step_10/val_detections.png", "run.log"]
    text = run_summary("train", str(run_dir), compose([]), [], 3725.4)
    assert "mode=train finished in 1:02:05" in text and f"run dir  {run_dir}" in text
    assert "last evaluation (step 10): AP 0.250  AP50 0.500\n" in text
