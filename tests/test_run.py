"""run.py as a user runs it: one command, its printed output, its exit code and its run dir."""
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from tests.conftest import REPO, run_cli


def test_inspect_d0_prints_the_exact_parameter_count_and_flops(tmp_path):
    result = run_cli("mode=inspect", "model=efficientdet-d0", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert "3880067" in result.stdout
    assert "2.54" in result.stdout or "2.55" in result.stdout
    assert "49104" in result.stdout  # anchors
    summary = json.loads((tmp_path / "inspect.json").read_text())
    assert summary["trainable_params"] == 3880067
    assert [level["height"] for level in summary["levels"]] == [64, 32, 16, 8, 4]
    # the run keeps its exact config (test_sweep reruns a job from it)
    composed = yaml.safe_load((tmp_path / ".hydra" / "config.yaml").read_text())
    assert composed["model"]["name"] == "efficientdet-d0" and composed["mode"] == "inspect"


def test_inspect_loads_a_checkpoint_given_as_trainer_ckpt(tmp_path):
    from effdet.model.builder import build_model
    from effdet.model.checkpoint import export_name_based
    from tests.conftest import compose

    cfg = compose(["model=efficientdet-lite0", "data=coco"])
    export_name_based(build_model(cfg.model, 90), str(tmp_path / "ckpt" / "model.ckpt"))
    result = run_cli("mode=inspect", "model=efficientdet-lite0", "data=shapes",
                     f"trainer.ckpt={tmp_path / 'ckpt' / 'model.ckpt'}", f"hydra.run.dir={tmp_path / 'b'}")
    assert result.returncode == 0, result.stderr
    assert "0 missing, 0 unexpected, 0 shape-mismatched" in result.stdout
    assert "class head not loaded" in result.stdout  # 90 classes → 6


@pytest.mark.parametrize("onednn, state", [("true", "on"), ("false", "off")])
def test_hardware_onednn_chooses_tensorflows_cpu_kernels_before_it_loads(tmp_path, onednn, state):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}  # as in a user's shell
    result = run_cli("mode=inspect", "model=efficientdet-lite0", "model.image_size=64", f"hardware.onednn={onednn}",
                     f"hydra.run.dir={tmp_path}", env=env)
    assert result.returncode == 0, result.stderr
    assert f"oneDNN kernels {state}" in result.stdout + result.stderr


@pytest.mark.parametrize("override, expected", [
    ("model=efficientdet-d9", ["unknown model 'efficientdet-d9'", "efficientdet-d0", "efficientdet-lite4",
                               "Did you mean"]),
    ("data=cocoa", ["unknown data 'cocoa'", "coco", "Did you mean 'coco'?"]),
    ("trainer.batch_size=0", ["trainer.batch_size=0", "must be ≥ 1"]),
    ("trainer.batch_size=abc", ["trainer.batch_size", "'abc'", "Integer"]),
    ("model.backbone=efficientnet-b9", ["model.backbone", "efficientnet-b7"]),
    ("trainer.ckpt=/nonexistent/ckpt", ["trainer.ckpt: no checkpoint at /nonexistent/ckpt"]),
])
def test_config_errors_are_one_clear_message_without_a_traceback(tmp_path, override, expected):
    result = run_cli(override, f"hydra.run.dir={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}")
    assert result.returncode != 0
    for text in expected:
        assert text in result.stderr, (text, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) <= 8, result.stderr


def test_show_data_draws_augmented_examples_of_the_shapes_dataset(tmp_path):
    result = run_cli("mode=show_data", "data.synthetic.num_train=24", "data.synthetic.num_val=4",
                     "data.synthetic.image_size=128", "model.image_size=128", "trainer.batch_size=4",
                     f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr
    assert "1:circle" in result.stdout
    summary = json.loads((tmp_path / "run" / "data.json").read_text())
    assert summary["num_train_examples"] == 24 and summary["mean_positive_anchors"] > 0
    assert (tmp_path / "run" / "data_samples.png").stat().st_size > 10_000


def test_train_runs_end_to_end_and_its_checkpoints_evaluate_infer_and_export(tmp_path):
    """A CI-sized `python run.py`: trains a few steps on shapes, evaluating with pycocotools as it goes, and
    writes its artifacts; then eval, test-dev, continuous eval, infer and export run on its run dir. (Resuming
    is the business of the kill/stop/finish test below.)"""
    run_dir = tmp_path / "run"
    tiny = ["data.synthetic.num_train=16", "data.synthetic.num_val=4", "data.synthetic.image_size=96",
            "model.image_size=64", "model.fpn_num_filters=8", "model.fpn_cell_repeats=1", "model.box_class_repeats=1",
            "trainer.batch_size=4", "trainer.log_every_n_steps=2", "trainer.checkpoint_every_n_steps=2",
            "trainer.progress_bar=false", f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"]
    # 4 steps per epoch: train_and_eval evaluates every half epoch, at steps 2 and 4
    first = run_cli(*tiny, "trainer.total_steps=4", "mode=train_and_eval", "eval.every_n_epochs=0.5")
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4]
    assert set(metrics[-1]) == {"step", "AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"}
    assert "AP50" in first.stdout
    for artifact in ("training_curves.png", "train_history.jsonl", "checkpoints/checkpoint", ".hydra/config.yaml",
                     "ap_over_steps.png"):
        assert (run_dir / artifact).exists(), artifact
    assert any((run_dir / "tensorboard").iterdir())
    after_training = json.loads((run_dir / "eval" / "step_4" / "detections.json").read_text())
    assert after_training and set(after_training[0]) == {"image_id", "category_id", "bbox", "score"}

    assert (run_dir / "eval" / "step_4" / "val_detections.png").stat().st_size > 10_000
    # the run ends with a summary: its run dir, what is in it (every path listed exists), what to run next
    where, listed, commands = end_of_run_summary(first.stdout)
    assert where == str(run_dir) and {"checkpoints/", "metrics.jsonl", "eval/step_4/val_detections.png",
                                      "tensorboard/"} <= set(listed)
    assert all((run_dir / path).exists() for path in listed), listed
    assert [command.split()[2] for command in commands[:3]] == ["mode=eval", "mode=infer", "mode=export"]

    # mode=eval on the run dir, as the summary printed it: the checkpoint's averaged weights detect exactly what
    # they did after training
    evaluated = subprocess.run([*shlex.split(commands[0]), f"hydra.run.dir={tmp_path / 'eval'}"], cwd=REPO,
                               capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "AP50" in evaluated.stdout
    details = tmp_path / "eval" / "eval" / "step_4"
    assert json.loads((details / "detections.json").read_text()) == after_training
    assert (details / "per_class_ap.csv").read_text().splitlines()[0] == "class,AP"
    assert json.loads((tmp_path / "eval" / "metrics.jsonl").read_text())["step"] == 4
    # test-dev: the same images' detections, unscored, in the file the evaluation server expects. (Padding
    # to the coarsest stride, 128 here, changes nothing for these square images.)
    testdev = run_cli(*tiny[:-1], "mode=eval", f"eval.ckpt={run_dir}", f"eval.testdev_dir={tmp_path / 'testdev'}",
                      "eval.padding=stride", f"hydra.run.dir={tmp_path / 'testdev-run'}")
    assert testdev.returncode == 0, testdev.stderr[-3000:]
    submitted = json.loads((tmp_path / "testdev" / "detections_test-dev2017_effdet_results.json").read_text())
    assert submitted == after_training and not (tmp_path / "testdev-run" / "metrics.jsonl").exists()

    # continuously, on the finished run: its last step is evaluated at once, and that ends the watch
    raw = run_cli(*tiny[:-1], "mode=eval", f"eval.ckpt={run_dir}", "eval.use_ema=false", "eval.continuous=true",
                  "eval.timeout=600", f"hydra.run.dir={tmp_path / 'raw'}")
    assert raw.returncode == 0, raw.stderr[-3000:]
    assert "step 4 is the run's last" in (tmp_path / "raw" / "run.log").read_text()

    # mode=infer on image files of any size and format; an unreadable one is reported and skipped. The network
    # runs in TFLite here (the SavedModel below, run by TensorFlow, must find the same detections)
    from PIL import Image, ImageDraw

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for name, size in (("wide.jpg", (150, 90)), ("tall.png", (70, 110))):
        picture = Image.new("RGB", size, (30, 30, 30))
        ImageDraw.Draw(picture).ellipse([10, 10, 60, 60], fill=(220, 40, 40))
        picture.save(pictures / name)
    (pictures / "notes.jpg").write_text("not an image")
    from effdet.data.video import VideoReader, VideoWriter

    clip = VideoWriter(str(pictures / "clip.mp4"), None, 96, 64)  # a circle crossing the frame in 6 frames
    for x in range(10, 70, 10):
        frame = Image.new("RGB", (96, 64), (30, 30, 30))
        ImageDraw.Draw(frame).ellipse([x, 10, x + 24, 34], fill=(220, 40, 40))
        clip.write(np.asarray(frame))
    clip.close()
    inferred = run_cli(*tiny[:-1], "mode=infer",
                       f"infer.input='{pictures}/*.jpg,{pictures / 'tall.png'},{pictures / 'clip.mp4'}'",  # quoted
                       f"infer.ckpt={run_dir}", "infer.draw_threshold=0.0", "eval.engine=tflite",
                       f"hydra.run.dir={tmp_path / 'infer'}")
    assert inferred.returncode == 0, inferred.stderr[-3000:]
    out = tmp_path / "infer" / "detections"
    assert sorted(p.name for p in out.iterdir()) == ["clip.annotated.mp4", "clip.jsonl", "tall.json", "tall.png",
                                                     "wide.json", "wide.png"]
    lines = [json.loads(line) for line in (out / "clip.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(6)) and all(line["detections"] for line in lines)
    assert sum(1 for _ in VideoReader(str(out / "clip.annotated.mp4"))) == 6
    assert "skipped" in (tmp_path / "infer" / "run.log").read_text()
    assert "notes.jpg" in (tmp_path / "infer" / "run.log").read_text()
    for name, (width, height) in (("wide", (150, 90)), ("tall", (70, 110))):
        record = json.loads((out / f"{name}.json").read_text())
        assert (record["width"], record["height"], record["step"]) == (width, height, 4)
        assert record["detections"], name
        for detection in record["detections"]:
            xmin, ymin, xmax, ymax = detection["box"]
            assert 0 <= xmin <= xmax <= width and 0 <= ymin <= ymax <= height  # in the original's pixels
            assert detection["class"] in ("circle", "square", "triangle", "star", "ring", "cross")
        annotated = np.asarray(Image.open(out / f"{name}.png"))
        original = np.asarray(Image.open(next(pictures.glob(name + ".*"))).convert("RGB"))
        assert annotated.shape == original.shape and (annotated != original).any()  # boxes drawn on it

    # mode=export: a SavedModel that takes uint8 images and returns detections, with the class names beside it;
    # the network as float32 and int8 TFLite and as ONNX, and the table of their AP and latency
    exported = run_cli(*tiny[:-1], "mode=export", f"export.ckpt={run_dir}", "export.tflite=true",
                       "export.quantize=[none,int8]", "export.calibration_samples=4", "export.onnx=true",
                       "export.compare=true", "export.latency_runs=2", f"hydra.run.dir={tmp_path / 'export'}")
    assert exported.returncode == 0, exported.stderr[-3000:]
    for name in ("model.tflite", "model_int8.tflite", "model.onnx", "model.anchors.npy", "export_report.md"):
        assert (tmp_path / "export" / name).stat().st_size > 0, name
    assert "integer ops only); LiteRT runs it: logits 1x" in exported.stdout
    assert "ONNX Runtime runs it" in exported.stdout
    report = json.loads((tmp_path / "export" / "export_report.json").read_text())
    assert [row["form"] for row in report["forms"]] == ["SavedModel (TensorFlow)", "TFLite float32", "TFLite int8",
                                                        "ONNX (ONNX Runtime)"]
    for row in report["forms"]:
        assert row["images"] == 4 and 0 <= row["AP"] <= 1 and row["latency_ms"] > 0 and row["megabytes"] > 0, row
    assert report["forms"][1]["AP"] == pytest.approx(report["forms"][0]["AP"], abs=1e-3)  # float32: the same AP
    assert report["forms"][2]["megabytes"] < 0.5 * report["forms"][1]["megabytes"]
    # mode=eval runs an exported file: the int8 network's COCO AP
    int8_eval = run_cli(*tiny[:-1], "mode=eval", f"eval.ckpt={run_dir}", "eval.engine=tflite",
                        f"eval.tflite_quantize={tmp_path / 'export' / 'model_int8.tflite'}",
                        f"hydra.run.dir={tmp_path / 'int8-eval'}")
    assert int8_eval.returncode == 0, int8_eval.stderr[-3000:]
    int8_ap = json.loads((tmp_path / "int8-eval" / "metrics.jsonl").read_text())["AP"]
    assert int8_ap == pytest.approx(report["forms"][2]["AP"], abs=1e-4)  # the report rounds AP
    import tensorflow as tf

    serve = tf.saved_model.load(str(tmp_path / "export" / "saved_model")).signatures["serving_default"]
    served = serve(images=tf.constant(np.asarray(Image.open(pictures / "tall.png"))[None]))
    assert int(served["num_detections"][0]) == len(json.loads((out / "tall.json").read_text())["detections"])
    labels = json.loads((tmp_path / "export" / "saved_model" / "labels.json").read_text())
    assert labels["1"] == "circle" and len(labels) == 6
    assert json.loads((tmp_path / "raw" / "eval" / "step_4" / "detections.json").read_text()) != after_training


def end_of_run_summary(stdout: str):
    """The run dir, the paths listed and the next commands of the summary a job printed last."""
    lines = stdout[stdout.rindex("── effdet: "):].splitlines()
    where = lines[1].split("run dir  ", 1)[1]
    cut = lines.index("next:")
    listed = [line.split()[0] for line in lines[2:cut] if line.startswith("  ")]
    return where, listed, [line.strip() for line in lines[cut + 1:] if line.startswith("  ")]


def tiny_training(tmp_path, run_dir, *more):
    return ["data.synthetic.num_train=16", "data.synthetic.num_val=4", "data.synthetic.image_size=96",
            "model.image_size=64", "model.fpn_num_filters=8", "model.fpn_cell_repeats=1", "model.box_class_repeats=1",
            "trainer.batch_size=4", "trainer.progress_bar=false", f"data.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={run_dir}", *more]


def start_cli(*args, log_path) -> subprocess.Popen:
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, os.path.join(REPO, "run.py"), *args], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT)


def wait_for_step(process, history_path, after_line, step, timeout=300):
    """Waits until the run has recorded `step` (counting only history lines after `after_line`)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        if history_path.exists():
            lines = history_path.read_text().splitlines()[after_line:]
            if any(json.loads(line)["step"] >= step for line in lines if line.strip()):
                return
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def latest_checkpoint_step(run_dir):
    import tensorflow as tf

    return int(tf.train.latest_checkpoint(str(run_dir / "checkpoints")).rsplit("-", 1)[1])


def test_killed_then_stopped_then_finished_the_run_resumes_each_time_where_it_was(tmp_path):
    """SIGKILL at a random step, restart: it resumes from the last checkpoint and the learning rate goes on
    where it was. SIGTERM: it saves at that very step and exits cleanly. Restart: it finishes."""
    run_dir = tmp_path / "run"
    history = run_dir / "train_history.jsonl"
    args = tiny_training(tmp_path, run_dir, "trainer.total_steps=40", "trainer.checkpoint_every_n_steps=5",
                         "trainer.log_every_n_steps=1", "trainer.eval_after_training=false")
    kill_at = random.Random().randint(7, 22)
    first = start_cli(*args, log_path=tmp_path / "first.log")
    wait_for_step(first, history, 0, kill_at)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before_kill = [json.loads(line) for line in history.read_text().splitlines()]
    killed_at = before_kill[-1]["step"]
    resume_at = latest_checkpoint_step(run_dir)
    assert killed_at - 5 <= resume_at <= killed_at and resume_at % 5 == 0, (kill_at, killed_at, resume_at)

    second = start_cli(*args, log_path=tmp_path / "second.log")
    stop_at = killed_at + 3
    wait_for_step(second, history, len(before_kill), stop_at)
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=120) == 0, (tmp_path / "second.log").read_text()[-3000:]
    output = (tmp_path / "second.log").read_text()
    assert f"at step {resume_at}" in output and "resumed from" in output, output[-3000:]
    stopped = [json.loads(line) for line in history.read_text().splitlines()][len(before_kill):]
    assert stopped[0]["step"] == resume_at + 1
    assert "stopped by SIGTERM" in output
    assert latest_checkpoint_step(run_dir) == stopped[-1]["step"]  # saved at the step it stopped, not before
    # The steps trained twice (after the checkpoint, before the kill) got the same learning rate twice.
    lr_first = {entry["step"]: entry["learning_rate"] for entry in before_kill}
    for entry in stopped:
        if entry["step"] in lr_first:
            assert entry["learning_rate"] == pytest.approx(lr_first[entry["step"]], rel=1e-6)

    third = run_cli(*args)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"at step {stopped[-1]['step']}" in third.stdout + third.stderr
    assert latest_checkpoint_step(run_dir) == 40
    steps = {json.loads(line)["step"] for line in history.read_text().splitlines()}
    assert steps == set(range(1, 41))
    rates = [entry["learning_rate"] for entry in sorted(
        {json.loads(line)["step"]: json.loads(line) for line in history.read_text().splitlines()}.values(),
        key=lambda entry: entry["step"])]
    peak = rates.index(max(rates))
    assert all(a >= b for a, b in zip(rates[peak:], rates[peak + 1:]))  # one cosine decay, never restarted


@pytest.mark.distributed
def test_two_workers_train_through_horovod_into_one_output_dir_and_evaluate_their_shards(tmp_path):
    """`python run.py hardware.num_workers=2`: run.py starts two Horovod workers itself; the job has one output dir
    (Hydra's default, dated) with one set of checkpoints and logs; the evaluation at the end, each worker on its
    half of the val images, scores what one process scores on all of them."""
    tiny = [arg for arg in tiny_training(tmp_path, "unused") if not arg.startswith("hydra.run.dir")]
    args = [*tiny, "data.synthetic.num_val=6", "trainer.batch_size=2", "trainer.total_steps=4",
            "trainer.checkpoint_every_n_steps=2", "trainer.log_every_n_steps=2", "eval.batch_size=3"]
    environment = {name: value for name, value in os.environ.items() if name != "HOROVOD_CYCLE_TIME"}
    # with every block recomputed in the backward pass: the same job, less memory (tests/model/test_recompute.py)
    result = run_cli(*args, "hardware.num_workers=2", "trainer.recompute=all", cwd=tmp_path, env=environment)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "starting 2 workers: horovodrun -np 2 -H localhost:2 --gloo" in result.stdout
    run_dirs = list((tmp_path / "outputs").glob("*/*"))
    assert len(run_dirs) == 1, run_dirs
    run_dir = run_dirs[0]
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index",
                                                           "ckpt-4.data-00000-of-00001", "ckpt-4.index"]
    log = (run_dir / "run.log").read_text()
    assert log.count("training efficientdet-lite0 on shapes") == 1 and "global batch 4 on 2 worker(s)" in log
    assert "Horovod's cycle: HOROVOD_CYCLE_TIME=20 ms" in log  # conf/hardware/cpu.yaml's, through horovodrun
    assert "recomputing activations in the backward pass: backbone, bifpn, heads (trainer.recompute=all)" in log
    steps = [json.loads(line)["step"] for line in (run_dir / "train_history.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # one writer
    assert "hardware.num_workers=2" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    sharded = json.loads((run_dir / "eval" / "step_4" / "detections.json").read_text())
    assert json.loads((run_dir / "eval" / "step_4" / "metrics.json").read_text())["num_images"] == 6

    alone = run_cli(*args, "mode=eval", f"eval.ckpt={run_dir}", f"hydra.run.dir={tmp_path / 'alone'}", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    single = json.loads((tmp_path / "alone" / "eval" / "step_4" / "detections.json").read_text())

    def by_image(rows):  # per image: its detections' scores, high to low (ties may swap between batchings)
        scores = {}
        for row in rows:
            scores.setdefault(row["image_id"], []).append(row["score"])
        return {image: sorted(values, reverse=True) for image, values in scores.items()}

    sharded_scores, single_scores = by_image(sharded), by_image(single)
    assert sorted(sharded_scores) == sorted(single_scores) == list(range(1, 7))
    for image in single_scores:
        np.testing.assert_allclose(sharded_scores[image], single_scores[image], rtol=1e-4, atol=1e-5)
    metrics = [json.loads((d / "eval" / "step_4" / "metrics.json").read_text()) for d in (run_dir, tmp_path / "alone")]
    assert metrics[0]["AP"] == pytest.approx(metrics[1]["AP"], abs=1e-6)


def damaged_copy_of_shapes(tmp_path):
    """A tiny shapes dataset copied out of the cache, as a user's own COCO-format records: one train shard cut
    mid-record, one with 100 bytes changed, one val record changed. Returns the data overrides and the damaged
    shards' paths."""
    import shutil

    from effdet.data.sources import prepare_shapes
    from tests.data.test_reader import damage, record_offsets

    root = prepare_shapes(str(tmp_path / "cache"), seed=0, num_train=24, num_val=6, image_size=96, num_shards=3)
    mine = tmp_path / "mine"
    shutil.copytree(os.path.join(root, "tfrecord"), mine)
    train = sorted(str(p) for p in mine.glob("train/*.tfrecord")) or sorted(str(p) for p in mine.glob("train-*"))
    val = sorted(str(p) for p in mine.glob("val/*.tfrecord")) or sorted(str(p) for p in mine.glob("val-*"))
    cut, flipped = train[0], train[1]
    offsets = record_offsets(cut)
    os.truncate(cut, (offsets[-2] + offsets[-1]) // 2)  # the last-but-one record, cut in half
    damage(flipped, record_offsets(flipped)[2] + 500, flip=100)
    damage(val[0], record_offsets(val[0])[1] + 500, flip=100)
    pattern = os.path.commonprefix(train)
    data = ["data=coco", f"data.train_file_pattern={pattern}*", f"data.val_file_pattern={os.path.commonprefix(val)}*",
            f"data.val_json_file={os.path.join(root, 'annotations', 'instances_val.json')}", "data.num_classes=6",
            "data.num_examples_per_epoch=null"]
    return data, cut, flipped, val[0]


def test_training_on_damaged_shards_skips_and_counts_them_or_stops_naming_the_shard(tmp_path):
    """A truncated and a corrupted train shard, a corrupted val record: data.on_corrupt=skip trains and evaluates
    to the end and reports each; stop saves a checkpoint at that step and exits with one line naming the shard."""
    data, cut, flipped, bad_val = damaged_copy_of_shapes(tmp_path)
    tiny = ["model.image_size=64", "model.fpn_num_filters=8", "model.fpn_cell_repeats=1", "model.box_class_repeats=1",
            "trainer.batch_size=4", "trainer.progress_bar=false", "trainer.log_every_n_steps=2", *data]
    # 2 bad records of 24 are more than the default 1 % (which stops a run just as data.on_corrupt=stop does)
    skipped = run_cli(*tiny, "trainer.total_steps=8", "data.max_corrupt_fraction=0.2",
                      f"hydra.run.dir={tmp_path / 'skip'}")
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    summary = json.loads((tmp_path / "skip" / "train_summary.json").read_text())
    assert summary["step"] == 8
    shards = summary["corrupt_records"]["shards"]
    assert sorted(shards) == sorted([cut, flipped]) and all(d["records"] == 1 for d in shards.values())
    assert "truncated" in shards[cut]["problem"] and "fails its CRC" in shards[flipped]["problem"]
    log = (tmp_path / "skip" / "run.log").read_text()
    assert f"corrupt train data: {cut}: truncated" in log and f"corrupt train data: {flipped}: fails its CRC" in log
    assert "corrupt_records=" in log  # the step log
    history = [json.loads(line) for line in (tmp_path / "skip" / "train_history.jsonl").read_text().splitlines()]
    assert history[-1]["corrupt_records"] >= 2
    metrics = json.loads((tmp_path / "skip" / "eval" / "step_8" / "metrics.json").read_text())
    assert metrics["num_images"] == 5 and metrics["corrupt_records"] == 1  # 6 val images, one record corrupt
    assert "the COCO metrics are over the 5 images detected; 1 of the 6 images" in log and bad_val in log

    stopped = run_cli(*tiny, "trainer.total_steps=50", "data.on_corrupt=stop", "trainer.eval_after_training=false",
                      f"hydra.run.dir={tmp_path / 'stop'}")
    assert stopped.returncode != 0
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert (cut in errors[0] or flipped in errors[0]) and "data.on_corrupt=stop" in errors[0]
    step = int(errors[0].split("Checkpoint saved at step ")[1].split(":")[0])
    assert 0 < step < 50 and latest_checkpoint_step(tmp_path / "stop") == step
