"""The training loop and bad records: skip counts them and goes on, stop (or too many) saves a checkpoint at that
step and ends with one message naming the shard, a batch the input cannot make costs that batch."""
import os

import pytest
import tensorflow as tf

from effdet.data.pipeline import Augmentation, InputPipeline
from effdet.data.reader import CorruptDataError, CorruptRecords
from effdet.data.targets import AnchorLabeler
from effdet.errors import DataError
from tests.data.test_pipeline import rectangle_record, write_records
from tests.data.test_reader import damage, record_offsets
from tests.train.test_trainer import SIZE, make_trainer, tiny_detector


@pytest.fixture
def damaged_shards(tmp_path):
    """Two shards of 4 records; the second record of the second shard has 100 bytes changed."""
    for index in range(2):
        write_records(tmp_path / f"train-{index}.tfrecord", [rectangle_record(index * 4 + i) for i in range(4)])
    bad = str(tmp_path / "train-1.tfrecord")
    damage(bad, record_offsets(bad)[1] + 100, flip=100)
    return str(tmp_path / "train-*"), bad


def trainer_on(tmp_path, pattern, on_corrupt, max_fraction=0.5, total_steps=6, **kwargs):
    corrupt = CorruptRecords("train", on_corrupt, max_fraction, expected_records=8)
    labeler = AnchorLabeler((SIZE, SIZE), 3, 5, 3, [1.0, 2.0, 0.5], 4.0)
    pipeline = InputPipeline(pattern, labeler, Augmentation(hflip=False), corrupt=corrupt, shuffle_buffer=4)
    trainer, _ = make_trainer(tmp_path / "run", total_steps=total_steps, make_model=tiny_detector,
                              corrupt=corrupt, steps_per_loop=1, **kwargs)
    return trainer, lambda step: pipeline.train(2)


def test_skip_trains_to_the_end_and_reports_the_bad_record(tmp_path, damaged_shards):
    pattern, bad = damaged_shards
    trainer, data = trainer_on(tmp_path, pattern, "skip")
    assert trainer.fit(data)["step"] == 6  # 12 images: more than one pass over the 7 good records
    summary = trainer.corrupt_summary()
    assert list(summary["shards"]) == [bad] and summary["shards"][bad]["records"] == 1
    assert summary["corrupt"] >= 1 and summary["records_read"] >= 7
    # the history counts as of each step: the readers run ahead of the steps, so it may lag the summary
    assert 1 <= trainer.history[-1]["corrupt_records"] <= summary["corrupt"]


def test_stop_saves_a_checkpoint_at_that_step_and_names_the_shard(tmp_path, damaged_shards):
    pattern, bad = damaged_shards
    trainer, data = trainer_on(tmp_path, pattern, "stop", total_steps=50)
    with pytest.raises(CorruptDataError) as caught:
        trainer.fit(data)
    message = str(caught.value)
    step = int(trainer.step)
    assert step < 50 and f"{bad}: fails its CRC" in message and f"at step {step}" in message
    assert trainer.manager.latest_checkpoint.endswith(f"ckpt-{step}") and "\n" not in message


def test_skip_stops_once_the_bad_records_pass_the_fraction(tmp_path, damaged_shards):
    pattern, bad = damaged_shards
    trainer, data = trainer_on(tmp_path, pattern, "skip", max_fraction=0.05, total_steps=50)
    with pytest.raises(CorruptDataError, match=r"of \d+ train records read are corrupt .*more than "
                                               r"data.max_corrupt_fraction=0.05; the first: .*train-1"):
        trainer.fit(data)
    assert trainer.manager.latest_checkpoint.endswith(f"ckpt-{int(trainer.step)}")


def failing_batches(fail_at, batch=2):
    """Batches of the tiny detector's fake input, except that making batch `fail_at` fails as a bad JPEG does."""
    from effdet.data.fake import FakeInput

    labeler = AnchorLabeler((SIZE, SIZE), 3, 5, 3, [1.0, 2.0, 0.5], 4.0)
    batches = FakeInput(labeler, 3).train(batch).take(40).enumerate()

    def maybe_fail(index, element):
        images, targets = element
        bad = tf.io.decode_jpeg(tf.constant(b"\xff\xd8\xff\xe0 not a jpeg"))
        pixels = tf.cond(tf.equal(index, fail_at), lambda: tf.cast(tf.reduce_sum(bad), tf.uint8) + images,
                         lambda: images)
        return pixels, targets

    return lambda step: batches.map(maybe_fail)


def test_a_batch_that_cannot_be_made_is_counted_and_training_goes_on(tmp_path):
    corrupt = CorruptRecords("train", "skip", 0.5, expected_records=100)
    trainer, _ = make_trainer(tmp_path, total_steps=6, make_model=tiny_detector, corrupt=corrupt, steps_per_loop=3)
    assert trainer.fit(failing_batches(fail_at=1))["step"] == 6  # batch 1 lost; the loop ran on from batch 2
    assert corrupt.corrupt == 1 and "does not decode" in corrupt.counts()["shards"]["(a batch; shard unknown)"]["problem"]


def test_input_that_runs_out_ends_the_run_with_a_checkpoint_and_a_message(tmp_path):
    corrupt = CorruptRecords("train", "skip", 0.5)
    trainer, data = make_trainer(tmp_path, total_steps=60, make_model=tiny_detector, corrupt=corrupt, steps_per_loop=1)
    with pytest.raises(DataError, match="the training data ran out.*Checkpoint saved at step 40"):
        trainer.fit(lambda step: data(step).take(40))
    assert os.path.exists(trainer.manager.latest_checkpoint + ".index")
