"""mode=eval's restore: our checkpoints with their moving average (or not), automl-style ones, wrong ones."""
import json
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from effdet.errors import CheckpointError
from effdet.eval.evaluate import per_class_table, plot_ap_over_steps, read_metrics
from effdet.model.builder import build_model
from effdet.model.checkpoint import checkpoint_of, export_name_based
from effdet.model.detector import build_detector, restore_for_inference
from effdet.modes.evaluation import latest_checkpoint_in, watch_checkpoints
from effdet.model.ema import build_ema
from tests.conftest import compose


@pytest.fixture
def tiny_cfg(tiny_model_overrides):
    return compose(["model=efficientdet-lite0", "data=shapes", *tiny_model_overrides])


def training_checkpoint(cfg, directory, step=7):
    """A checkpoint laid out as the trainer writes it, whose averages differ from the weights."""
    model = build_model(cfg.model, 6)
    ema = build_ema(model, 0.9998)
    for shadow in ema.shadow_variables:
        shadow.assign(shadow + 0.25)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=tf.keras.optimizers.SGD(0.1), ema=ema,
                                     step=tf.Variable(step, dtype=tf.int64))
    prefix = tf.train.CheckpointManager(checkpoint, str(directory / "checkpoints"), 3, checkpoint_name="ckpt") \
        .save(checkpoint_number=step)
    return model, ema, prefix


@pytest.mark.parametrize("use_ema", [True, False])
def test_a_run_dir_gives_its_latest_checkpoint_with_the_averaged_or_the_raw_weights(tiny_cfg, tmp_path, use_ema):
    trained, ema, prefix = training_checkpoint(tiny_cfg, tmp_path)
    assert checkpoint_of(str(tmp_path)) == prefix == checkpoint_of(str(tmp_path / "checkpoints"))
    model = build_model(tiny_cfg.model, 6)
    assert restore_for_inference(model, prefix, use_ema=use_ema) == 7
    expected = ema.shadow_variables if use_ema else ema.source_variables
    by_name = {v.name: v for v in model.variables}
    for source, value in zip(ema.source_variables, expected):
        np.testing.assert_array_equal(by_name[source.name].numpy(), value.numpy())


def test_automl_style_checkpoints_load_by_name(tiny_cfg, tmp_path):
    source = build_model(tiny_cfg.model, 6)
    prefix = export_name_based(source, str(tmp_path / "automl" / "model.ckpt-12"))
    model = build_model(tiny_cfg.model, 6)
    assert restore_for_inference(model, prefix) == 12
    for got, want in zip(model.variables, source.variables):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_a_checkpoint_of_another_num_classes_is_refused(tiny_cfg, tmp_path):
    _, _, prefix = training_checkpoint(tiny_cfg, tmp_path)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        restore_for_inference(build_model(tiny_cfg.model, 3), prefix)


def test_eval_infer_and_export_build_their_detector_from_a_run_dir_with_its_averaged_weights(tiny_cfg, tmp_path):
    _, ema, prefix = training_checkpoint(tiny_cfg, tmp_path, step=9)
    model, restored_prefix, step = build_detector(tiny_cfg, str(tmp_path), use_ema=True, key="infer.ckpt")
    assert (restored_prefix, step, model.num_classes) == (prefix, 9, tiny_cfg.data.num_classes)
    by_name = {v.name: v for v in model.variables}
    for source, average in zip(ema.source_variables, ema.shadow_variables):
        np.testing.assert_array_equal(by_name[source.name].numpy(), average.numpy())
    with pytest.raises(CheckpointError, match=f"export.ckpt={tmp_path / 'nowhere'}: no checkpoint at"):
        build_detector(tiny_cfg, str(tmp_path / "nowhere"), use_ema=True, key="export.ckpt")


def test_no_checkpoint_in_a_run_dir_says_so(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoint_of(str(tmp_path))


def test_metrics_history_and_its_plot(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "AP": a, "AP50": a * 2, "AP75": a, "AR100": a * 3} for s, a in ((10, 0.1), (20, 0.2))]
    rows.append({**rows[0], "AP": 0.15})  # step 10 evaluated again: the latest record counts
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    records = read_metrics(str(path))
    assert [r["step"] for r in records] == [10, 20] and records[0]["AP"] == 0.15
    plot_ap_over_steps(records, str(tmp_path / "ap.png"))
    assert (tmp_path / "ap.png").stat().st_size > 5000
    assert per_class_table({"circle": 0.5, "square": -1.0, "triangle": 0.7}).splitlines() == [
        "triangle  0.700", "circle    0.500", "square    -"]


def write_checkpoints_over_time(directory, steps, pause):
    """A stand-in for a training run: a checkpoint every `pause` seconds, in a thread."""
    variable = tf.Variable(0.0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=variable), str(directory), 10, checkpoint_name="ckpt")

    def run():
        for step in steps:
            time.sleep(pause)
            variable.assign(float(step))
            manager.save(checkpoint_number=step)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def step_of(prefix):
    return int(prefix.rsplit("-", 1)[1])


def test_continuous_evaluation_follows_a_run_and_ends_at_its_last_step(tmp_path):
    writer = write_checkpoints_over_time(tmp_path / "checkpoints", [2, 4, 6], pause=0.4)
    started = time.monotonic()
    evaluated = watch_checkpoints(lambda: latest_checkpoint_in(str(tmp_path)), step_of, min_interval=0.0,
                                  timeout=30.0, final_step=6, poll=0.05)
    writer.join()
    steps = [step for _, step in evaluated]
    assert steps == [2, 4, 6]  # each once, as they appeared, and the last one ends the loop
    assert time.monotonic() - started < 10


def test_continuous_evaluation_stops_after_the_timeout_without_new_checkpoints(tmp_path):
    writer = write_checkpoints_over_time(tmp_path, [1], pause=0.2)
    started = time.monotonic()
    evaluated = watch_checkpoints(lambda: latest_checkpoint_in(str(tmp_path)), step_of, min_interval=0.0,
                                  timeout=1.0, poll=0.05)
    writer.join()
    assert [step for _, step in evaluated] == [1]
    assert 1.0 <= time.monotonic() - started < 5


def test_continuous_evaluations_are_min_interval_apart():
    now = [0.0]
    # A new checkpoint every 10 s of (simulated) time; evaluations take 1 s and must be 25 s apart.
    latest = lambda: f"ckpt-{int(now[0] // 10) * 10}" if now[0] < 60 else "ckpt-60"  # noqa: E731
    starts = []

    def evaluate(prefix):
        starts.append(now[0])
        now[0] += 1.0
        return step_of(prefix)

    def sleep(seconds):
        now[0] += seconds

    evaluated = watch_checkpoints(latest, evaluate, min_interval=25.0, timeout=100.0, final_step=60, poll=1.0,
                                  clock=lambda: now[0], sleep=sleep)
    assert all(b - a >= 25.0 for a, b in zip(starts, starts[1:]))
    assert evaluated[-1][1] == 60 and len(evaluated) == len({prefix for prefix, _ in evaluated})


def test_evaluation_scores_the_images_it_could_read_or_stops_at_a_bad_val_record(tmp_path, tiny_model_overrides):
    from effdet.data.builder import build_labeler
    from effdet.data.reader import CorruptDataError
    from effdet.data.sources import build_source
    from effdet.eval.evaluate import evaluate
    from tests.data.test_pipeline import rectangle_record, write_records
    from tests.data.test_reader import damage, record_offsets

    shard = tmp_path / "val-0.tfrecord"
    write_records(shard, [rectangle_record(i) for i in range(1, 6)])
    damage(str(shard), record_offsets(str(shard))[2] + 300, flip=40)  # image 3
    (tmp_path / "val.json").write_text(json.dumps({
        "images": [{"id": i, "width": 160, "height": 120} for i in range(1, 6)],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [40, 30, 60, 60], "area": 3600,
                         "iscrowd": 0} for i in range(1, 6)],
        "categories": [{"id": 1, "name": "rect"}]}))
    overrides = ["data=coco", "data.train_file_pattern=null", f"data.val_file_pattern={shard}",
                 f"data.val_json_file={tmp_path / 'val.json'}", "data.num_classes=1", *tiny_model_overrides]
    cfg = compose(overrides)
    source = build_source(cfg.data)
    model = build_model(cfg.model, 1)
    result = evaluate(model, source, build_labeler(cfg.model), cfg.data, cfg.eval)
    assert result["num_images"] == 4 and result["corrupt_records"] == 1
    stopping = compose([*overrides, "data.on_corrupt=stop"])
    with pytest.raises(CorruptDataError, match=f"corrupt val record in {shard}: fails its CRC"):
        evaluate(model, source, build_labeler(stopping.model), stopping.data, stopping.eval)
