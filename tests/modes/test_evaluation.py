"""mode=eval's restore: our checkpoints with their moving average (or not), automl-style ones, wrong ones."""
import json

import numpy as np
import pytest
import tensorflow as tf

from effdet.errors import CheckpointError
from effdet.eval.evaluate import per_class_table, plot_ap_over_steps, read_metrics
from effdet.model.builder import build_model
from effdet.model.checkpoint import export_name_based
from effdet.modes.evaluation import checkpoint_of, restore_for_evaluation
from effdet.train.builder import build_ema
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
    assert restore_for_evaluation(model, prefix, use_ema=use_ema) == 7
    expected = ema.shadow_variables if use_ema else ema.source_variables
    by_name = {v.name: v for v in model.variables}
    for source, value in zip(ema.source_variables, expected):
        np.testing.assert_array_equal(by_name[source.name].numpy(), value.numpy())


def test_automl_style_checkpoints_load_by_name(tiny_cfg, tmp_path):
    source = build_model(tiny_cfg.model, 6)
    prefix = export_name_based(source, str(tmp_path / "automl" / "model.ckpt-12"))
    model = build_model(tiny_cfg.model, 6)
    assert restore_for_evaluation(model, prefix) == 12
    for got, want in zip(model.variables, source.variables):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_a_checkpoint_of_another_num_classes_is_refused(tiny_cfg, tmp_path):
    _, _, prefix = training_checkpoint(tiny_cfg, tmp_path)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        restore_for_evaluation(build_model(tiny_cfg.model, 3), prefix)


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
