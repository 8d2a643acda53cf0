"""Evaluations that repeat (train_and_eval, continuous eval): what they share is built once, and stays correct."""
import collections
import glob
import json
import os

import pytest
import tensorflow as tf

from effdet.data import pipeline as pipeline_module
from effdet.data.builder import build_labeler
from effdet.data.sources import build_source
from effdet.eval import engines, evaluate as evaluate_module
from effdet.eval.evaluate import RecordedEvaluations, SplitDetector
from effdet.hardware.workers import Workers
from effdet.model.builder import build_model
from tests.conftest import compose


@pytest.fixture
def job(tmp_path, tiny_model_overrides):
    cfg = compose(["data=shapes", "data.synthetic.num_train=8", "data.synthetic.num_val=6",
                   "data.synthetic.image_size=128", "eval.batch_size=4", f"data.cache_dir={tmp_path / 'cache'}",
                   *tiny_model_overrides])
    source = build_source(cfg.data)
    return cfg, build_model(cfg.model, source.num_classes), source, build_labeler(cfg.model)


def counting(monkeypatch, counts, module, name):
    """Replaces module.name by a wrapper counting its calls; inside a tf.function, a call is a trace."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        counts[name] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def test_evaluations_of_one_recorder_trace_the_detector_and_build_the_val_input_once(job, tmp_path, monkeypatch):
    cfg, model, source, labeler = job
    counts = collections.Counter()
    counting(monkeypatch, counts, evaluate_module, "postprocess")  # traced by the detector's tf.function
    counting(monkeypatch, counts, engines, "flat_network")  # the tensorflow engine's network, once per tf.function
    counting(monkeypatch, counts, pipeline_module, "records_dataset")  # a from_generator per val dataset built
    with RecordedEvaluations(cfg, model, source, labeler, Workers(), str(tmp_path / "run")) as evaluations:
        results = [evaluations(1)]
        first = dict(counts)  # the last, smaller batch is traced for its own shape
        results += [evaluations(step) for step in (2, 3)]
    # records_dataset twice: the val passes' one input, and the pictures' first images, read at the first
    assert counts == first and first["flat_network"] == 1 and first["records_dataset"] == 2
    assert results[0]["metrics"] == results[2]["metrics"] and results[2]["num_images"] == 6
    assert results[0]["corrupt_records"] == results[2]["corrupt_records"] == 0


def test_a_kept_detector_sees_the_weights_of_each_evaluation(job, tmp_path):
    cfg, model, source, labeler = job
    run_dir = tmp_path / "run"
    with RecordedEvaluations(cfg, model, source, labeler, Workers(), str(run_dir)) as evaluations:
        evaluations(1)
        for variable in model.trainable_variables:  # what an EMA swap or a restored checkpoint does
            variable.assign(variable * 0.5 + 0.01)
        evaluations(2)
        for variable in model.trainable_variables:
            variable.assign((variable - 0.01) * 2.0)
        evaluations(3)
    detections = [json.loads((run_dir / "eval" / f"step_{step}" / "detections.json").read_text())
                  for step in (1, 2, 3)]
    assert detections[0] != detections[1]
    boxes = [[x for d in run for x in d["bbox"]] for run in detections]
    assert len(boxes[0]) == len(boxes[2]) and boxes[0] == pytest.approx(boxes[2], abs=1e-3)


def test_the_evaluations_write_one_tensorboard_file_and_close_it(job, tmp_path, closed_writers):
    cfg, model, source, labeler = job
    run_dir = tmp_path / "run"
    closed = closed_writers
    evaluations = RecordedEvaluations(cfg, model, source, labeler, Workers(), str(run_dir))
    for step in (1, 2, 3):
        evaluations(step)
    assert not closed
    evaluations.close()
    assert closed == [True]
    files = glob.glob(os.path.join(run_dir, "tensorboard", "events.out.tfevents.*"))
    assert len(files) == 1
    steps = [event.step for event in tf.compat.v1.train.summary_iterator(files[0])
             for value in event.summary.value if value.tag == "eval/AP"]
    assert steps == [1, 2, 3]


def test_each_pass_of_a_split_detector_counts_its_own_records(job):
    cfg, model, source, labeler = job
    split = SplitDetector(model, source, labeler, cfg.data, cfg.eval)
    first_rows, first_ids, first = split()
    rows, ids, second = split()
    assert first["records_read"] == 6 and second == first  # not the two passes' records
    assert ids == first_ids and len(rows) == len(first_rows)
