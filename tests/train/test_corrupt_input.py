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
from tests.train.test_trainer import SIZE, fit, make_trainer, tiny_detector


@pytest.fixture
def damaged_shards(tmp_path):
    """Two shards of 4 records; the second record of the second shard has 100 bytes changed."""
    for index in range(2):
        write_records(tmp_path / f"train-{index}.tfrecord", [rectangle_record(index * 4 + i) for i in range(4)])
    bad = str(tmp_path / "train-1.tfrecord")
    damage(bad, record_offsets(bad)[1] + 100, flip=100)
    return str(tmp_path / "train-*"), bad


def trainer_on(tmp_path, pattern, on_corrupt, max_fraction=0.5, total_steps=6, workers=None, **kwargs):
    """A trainer of the tiny detector whose input is the records of `pattern` (this worker's part of them)."""
    from effdet.data.pipeline import Shard

    shard = Shard(workers.rank, workers.size) if workers else Shard()
    corrupt = CorruptRecords("train", on_corrupt, max_fraction, expected_records=8 // shard.count)
    labeler = AnchorLabeler((SIZE, SIZE), 3, 5, 3, [1.0, 2.0, 0.5], 4.0)
    pipeline = InputPipeline(pattern, labeler, Augmentation(hflip=False), corrupt=corrupt, shuffle_buffer=4)
    trainer, _ = make_trainer(tmp_path / "run", total_steps=total_steps, make_model=tiny_detector,
                              corrupt=corrupt, steps_per_loop=1, workers=workers, **kwargs)
    return trainer, lambda step: pipeline.train(2, shard)


def test_skip_trains_to_the_end_and_reports_the_bad_record(tmp_path, damaged_shards):
    pattern, bad = damaged_shards
    trainer, data = trainer_on(tmp_path, pattern, "skip")
    summary, history = fit(trainer, data)
    assert summary["step"] == 6  # 12 images: more than one pass over the 7 good records
    summary = trainer.corrupt_summary()
    assert list(summary["shards"]) == [bad] and summary["shards"][bad]["records"] == 1
    assert summary["corrupt"] >= 1 and summary["records_read"] >= 7
    # the history counts as of each step: the readers run ahead of the steps, so it may lag the summary
    assert 1 <= history[-1]["corrupt_records"] <= summary["corrupt"]


def test_stop_saves_a_checkpoint_at_that_step_and_names_the_shard(tmp_path, damaged_shards):
    pattern, bad = damaged_shards
    trainer, data = trainer_on(tmp_path, pattern, "stop", total_steps=50)
    with pytest.raises(CorruptDataError) as caught:
        fit(trainer, data)
    message = str(caught.value)
    step = int(trainer.step)
    assert step < 50 and f"{bad}: fails its CRC" in message and f"at step {step}" in message
    assert trainer.manager.latest_checkpoint.endswith(f"ckpt-{step}") and "\n" not in message


def test_skip_stops_once_the_bad_records_pass_the_fraction(tmp_path, damaged_shards):
    pattern, bad = damaged_shards
    trainer, data = trainer_on(tmp_path, pattern, "skip", max_fraction=0.05, total_steps=50)
    with pytest.raises(CorruptDataError, match=r"of \d+ train records read are corrupt .*more than "
                                               r"data.max_corrupt_fraction=0.05; the first: .*train-1"):
        fit(trainer, data)
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
    assert fit(trainer, failing_batches(fail_at=1))[0]["step"] == 6  # batch 1 lost; the loop ran on from batch 2
    unknown = corrupt.counts()["shards"]["(a batch; shard unknown)"]
    assert corrupt.corrupt == 1 and "does not decode" in unknown["problem"]


def test_input_that_runs_out_ends_the_run_with_a_checkpoint_and_a_message(tmp_path):
    corrupt = CorruptRecords("train", "skip", 0.5)
    trainer, data = make_trainer(tmp_path, total_steps=60, make_model=tiny_detector, corrupt=corrupt, steps_per_loop=1)
    with pytest.raises(DataError, match="the training data ran out.*Checkpoint saved at step 40"):
        fit(trainer, lambda step: data(step).take(40))
    assert os.path.exists(trainer.manager.latest_checkpoint + ".index")


def test_two_workers_sum_their_bad_records_and_stop_together(tmp_path, damaged_shards):
    """Under horovodrun -np 2, each worker reads one shard; only rank 1's is damaged. skip: both train to the end
    and the summary has rank 1's bad record; past the fraction of both workers' records, or with stop, both
    stop at the same step with rank 1's shard named, and rank 0 has saved that step."""
    import json
    import subprocess
    import sys

    from tests.train import horovod_corrupt_worker

    pattern, bad = damaged_shards
    horovodrun = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    env.pop("HOROVOD_CYCLE_TIME", None)
    result = subprocess.run([horovodrun, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable,
                             horovod_corrupt_worker.__file__, pattern, str(tmp_path)],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank in ranks:
        assert rank["skip"]["step"] == 6
        assert list(rank["skip"]["corrupt"]["shards"]) == [bad]  # merged: rank 0 knows rank 1's shard
    assert ranks[0]["skip"]["corrupt"] == ranks[1]["skip"]["corrupt"]
    for case in ("stop", "fraction"):
        steps = {rank[case]["step"] for rank in ranks}
        assert len(steps) == 1 and all(bad in rank[case]["message"] for rank in ranks), (case, ranks)
        assert ranks[0][case]["checkpoint"].endswith(f"ckpt-{steps.pop()}")
    message = ranks[0]["fraction"]["message"]
    assert "more than data.max_corrupt_fraction=0.1" in message
    assert int(message.split(" of ")[1].split()[0]) >= 8  # both workers' records: each filled a 4-record buffer
