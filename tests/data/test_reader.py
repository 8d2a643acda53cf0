"""The checking reader: damage costs the damaged record only, and every bad record is counted with its shard."""
import os
import struct

import pytest
import tensorflow as tf

from effdet.data.example import to_example
from effdet.data.pipeline import Augmentation, InputPipeline
from effdet.data.reader import (CorruptRecords, ShardReader, image_problem, masked_crc32c, merge_counts,
                                parse_example, stop_reason)
from tests.data.test_pipeline import labeler, rectangle_record, write_records


def serialized(index, **kwargs):
    return to_example(rectangle_record(index, **kwargs)).SerializeToString()


def record_offsets(path):
    """Byte offset of every record of a shard, read off its length headers."""
    data, offsets, offset = open(path, "rb").read(), [], 0
    while offset < len(data):
        offsets.append(offset)
        offset += 16 + struct.unpack("<Q", data[offset:offset + 8])[0]
    return offsets


def damage(path, at, flip=1):
    data = bytearray(open(path, "rb").read())
    for i in range(at, at + flip):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def source_ids(path, tally):
    return [tf.train.Example.FromString(r).features.feature["image/source_id"].bytes_list.value[0].decode()
            for r in ShardReader(str(path), tally)]


@pytest.fixture
def shard(tmp_path):
    path = tmp_path / "train-00000-of-00001.tfrecord"
    write_records(path, [rectangle_record(i) for i in range(6)])
    return path


def test_the_crc_is_tfrecords_masked_crc32c(shard):
    header = open(shard, "rb").read(12)
    assert masked_crc32c(header[:8]) == struct.unpack("<I", header[8:])[0]


def test_a_clean_shard_reads_every_record_in_order(shard):
    tally = CorruptRecords()
    assert source_ids(shard, tally) == [str(i) for i in range(6)]
    assert tally.records_read == 6 and tally.corrupt == 0 and tally.stop_reason() is None


def test_changed_data_bytes_cost_that_record_alone(shard):
    offsets = record_offsets(shard)
    damage(shard, offsets[2] + 200, flip=100)  # inside record 2's data: its length is intact
    tally = CorruptRecords()
    assert source_ids(shard, tally) == ["0", "1", "3", "4", "5"]
    counts = tally.counts()
    assert counts["corrupt"] == 1 and counts["records_read"] == 5
    assert counts["shards"][str(shard)]["offset"] == offsets[2]
    assert "fails its CRC" in counts["shards"][str(shard)]["problem"]


def test_a_changed_length_is_skipped_by_finding_the_next_good_record(shard):
    offsets = record_offsets(shard)
    damage(shard, offsets[3] + 2)  # record 3's length: where record 4 starts must be searched for
    tally = CorruptRecords()
    assert source_ids(shard, tally) == ["0", "1", "2", "4", "5"]
    damaged = tally.counts()["shards"][str(shard)]
    assert damaged["offset"] == offsets[3] and f"{offsets[4] - offsets[3]} bytes skipped" in damaged["problem"]


def test_a_shard_cut_mid_record_keeps_the_records_before_the_cut(shard):
    offsets = record_offsets(shard)
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[:(offsets[4] + offsets[5]) // 2])
    tally = CorruptRecords()
    assert source_ids(shard, tally) == ["0", "1", "2", "3"]
    assert "truncated" in tally.counts()["shards"][str(shard)]["problem"] and tally.corrupt == 1


def test_a_shard_that_vanishes_counts_the_records_it_had(shard, tmp_path):
    tally = CorruptRecords()
    assert len(source_ids(shard, tally)) == 6
    os.remove(shard)
    assert source_ids(shard, tally) == []
    assert tally.corrupt == 6 and "cannot be read" in tally.counts()["shards"][str(shard)]["problem"]


def test_records_that_pass_their_crc_but_cannot_be_used_are_named():
    good = serialized(0)
    assert parse_example(good) is None
    assert "does not parse" in parse_example(b"\x0a\xff\xff\xff")
    example = tf.train.Example.FromString(good)
    example.features.feature["image/object/class/label"].int64_list.value.append(2)  # 2 labels, 1 box
    assert "different lengths" in parse_example(example.SerializeToString())
    example = tf.train.Example.FromString(good)
    example.features.feature["image/object/bbox/xmin"].float_list.value[0] = float("nan")
    assert "not finite" in parse_example(example.SerializeToString())
    example = tf.train.Example.FromString(good)
    del example.features.feature["image/height"].int64_list.value[:]
    example.features.feature["image/height"].float_list.value.append(120.0)
    assert "float_list, not a int64_list" in parse_example(example.SerializeToString())
    record = rectangle_record(0)
    record.height = 90  # the record says 90 rows, the image has 120: its crop window would not fit
    assert "(90×160) are not its image's (120×160)" in parse_example(to_example(record).SerializeToString())


def test_images_that_tensorflow_cannot_decode_are_found_from_their_headers():
    record = rectangle_record(0)
    jpeg = record.encoded_jpeg
    assert image_problem(jpeg, (120, 160)) is None
    assert "not its image's" in image_problem(jpeg, (90, 160))
    assert "truncated" in image_problem(jpeg[:len(jpeg) // 2])
    assert "not a JPEG, PNG" in image_problem(b"hello")
    assert image_problem(jpeg + b"\x00" * 300) is None  # bytes after the end marker: TensorFlow decodes it
    no_tables = jpeg.replace(b"\xff\xdb", b"\xff\xfe")  # quantization tables turned into comments
    assert "no quantization table" in image_problem(no_tables)
    for bad in (jpeg[:len(jpeg) // 2], no_tables):  # what the checks rule out, TensorFlow cannot decode
        with pytest.raises(tf.errors.InvalidArgumentError):
            tf.io.decode_jpeg(bad)


def test_skip_stops_past_the_fraction_and_stop_at_the_first_bad_record():
    counts = {"split": "train", "records_read": 990, "corrupt": 10,
              "shards": {"a.tfrecord": {"problem": "fails its CRC", "offset": 12, "records": 10, "hits": 10}}}
    assert stop_reason(counts, "skip", 0.01) is None  # 10 of 1000: not more than 1 %
    counts.update(records_read=900)
    assert "more than data.max_corrupt_fraction=0.01; the first: a.tfrecord: fails its CRC at byte 12" in \
        stop_reason(counts, "skip", 0.01)
    # judged against at least one pass: one bad record among the first few read is not 1 % of the data
    assert stop_reason({**counts, "records_read": 3, "corrupt": 1}, "skip", 0.01, expected_records=1000) is None
    assert "data.on_corrupt=stop" in stop_reason({**counts, "corrupt": 1}, "stop", 0.01)
    merged = merge_counts([counts, {"split": "train", "records_read": 100, "corrupt": 0, "shards": {}}])
    assert merged["records_read"] == 1000 and merged["corrupt"] == 10


def test_the_pipeline_trains_past_damaged_shards_and_counts_them(tmp_path):
    for index in range(2):
        write_records(tmp_path / f"train-{index}.tfrecord", [rectangle_record(index * 4 + i) for i in range(4)])
    first = str(tmp_path / "train-0.tfrecord")
    damage(first, record_offsets(first)[1] + 100, flip=100)
    second = str(tmp_path / "train-1.tfrecord")
    open(second, "r+b").truncate(record_offsets(second)[3] + 30)
    pipeline = InputPipeline(str(tmp_path / "train-*"), labeler(), Augmentation(hflip=False), shuffle_buffer=1,
                             deterministic=True)
    batches = iter(pipeline.train(batch_size=2))
    for _ in range(9):  # 6 good records a pass: 3 passes, each meeting both bad records
        images, _ = next(batches)
        assert images.shape == (2, 64, 64, 3)
    counts = pipeline.corrupt.counts()
    assert sorted(counts["shards"]) == [first, second]
    assert all(damage["records"] == 1 for damage in counts["shards"].values())
    assert counts["corrupt"] >= 4 and counts["records_read"] >= 18


def test_evaluation_reads_every_good_record_once(tmp_path):
    write_records(tmp_path / "val.tfrecord", [rectangle_record(i) for i in range(5)])
    path = str(tmp_path / "val.tfrecord")
    damage(path, record_offsets(path)[2] + 100, flip=50)
    pipeline = InputPipeline(path, labeler(), Augmentation())
    ids = [i for _, batch in pipeline.eval(batch_size=2) for i in batch["source_id"].numpy().tolist()]
    assert ids == [b"0", b"1", b"3", b"4"] and pipeline.corrupt.corrupt == 1


def test_a_record_met_again_is_not_checked_again_but_its_crc_is(shard):
    tally = CorruptRecords()
    assert len(source_ids(shard, tally)) == 6
    checked = next(iter(tally._verified.values()))
    assert len(checked) == 6
    offsets = record_offsets(shard)
    damage(shard, offsets[1] + 300, flip=10)  # a checked record changes: its CRC still catches it
    os.utime(shard, ns=(0, 0))
    assert source_ids(shard, tally) == ["0", "2", "3", "4", "5"]
    assert tally.corrupt == 1


def test_a_reset_tally_counts_the_next_pass_alone_and_keeps_what_it_learnt_of_the_shards(shard):
    damage(shard, record_offsets(shard)[2] + 200, flip=100)
    tally = CorruptRecords("val")
    first = source_ids(shard, tally)
    counts = tally.counts()
    tally.reset()
    assert tally.counts() == {"split": "val", "records_read": 0, "corrupt": 0, "shards": {}}
    assert source_ids(shard, tally) == first and tally.counts() == counts  # not twice the first pass's
    assert len(next(iter(tally._verified.values()))) == 5  # the good records are not checked again
