"""The input pipeline: boxes stay on their objects through augmentation, ranks read disjoint parts,
a seed fixes everything, evaluation maps back to the original pixels."""
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from effdet.data import augment
from effdet.data.example import DetectionRecord, to_example
from effdet.data.fake import FakeInput
from effdet.data.pipeline import POSITIONS_PER_EPOCH, Augmentation, InputPipeline, Shard, split_position
from effdet.data.targets import AnchorLabeler
from effdet.errors import DataError

RED = (255, 0, 0)


def jpeg(array, quality=95):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def image_with_rectangle(height, width, box, colour=RED):
    """A grey image with one solid rectangle at `box` (ymin, xmin, ymax, xmax) in pixels."""
    array = np.full([height, width, 3], 128, np.uint8)
    ymin, xmin, ymax, xmax = box
    array[ymin:ymax, xmin:xmax] = colour
    return array


def write_records(path, records):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(to_example(record).SerializeToString())


def rectangle_record(index, height=120, width=160, box=(30, 40, 90, 100), label=1):
    ymin, xmin, ymax, xmax = box
    return DetectionRecord(jpeg(image_with_rectangle(height, width, box)), str(index), height, width,
                           boxes=np.array([[ymin / height, xmin / width, ymax / height, xmax / width]]),
                           labels=[label], texts=["rect"], is_crowd=[0], areas=[(ymax - ymin) * (xmax - xmin)])


def labeler(size=64):
    return AnchorLabeler((size, size), 3, 5, 3, [1.0, 2.0, 0.5], 4.0)


@pytest.fixture(scope="module")
def rectangles(tmp_path_factory):
    """Two shards of 6 images each, one red rectangle per image at a known place."""
    folder = tmp_path_factory.mktemp("rectangles")
    for shard in range(2):
        write_records(folder / f"rect-{shard:05d}-of-00002.tfrecord",
                      [rectangle_record(shard * 6 + i) for i in range(6)])
    return str(folder / "rect-*")


def red_fraction(image, box):
    ymin, xmin, ymax, xmax = [int(round(v)) for v in box]
    inside = image[ymin + 1:ymax - 1, xmin + 1:xmax - 1]
    red = (inside[..., 0] > 200) & (inside[..., 1] < 60) & (inside[..., 2] < 60)
    return red.mean() if red.size else 0.0


def test_flip_moves_a_known_box_with_the_image():
    image = tf.constant(image_with_rectangle(40, 100, (10, 10, 30, 40)), tf.float32)
    boxes = tf.constant([[10.0, 10.0, 30.0, 40.0]])
    flipped = None
    for seed in range(20):  # some seeds flip, some do not
        out_image, out_boxes = augment.horizontal_flip(image, boxes, tf.constant([seed, 0], tf.int64))
        if out_boxes.numpy()[0, 1] != 10.0:
            flipped = (out_image.numpy(), out_boxes.numpy()[0])
            break
    assert flipped is not None
    out_image, box = flipped
    np.testing.assert_allclose(box, [10, 60, 30, 90])  # x' = 100 - x
    assert red_fraction(out_image, box) == 1.0
    assert out_image[20, 20, 0] == 128  # where the rectangle was is background now


@pytest.mark.parametrize("image_scale, ratio", [(0.45, 2), (0.2, 4), (0.1, 8)])
def test_a_jpeg_decoded_at_reduced_resolution_gives_the_image_and_boxes_of_a_full_decode(image_scale, ratio):
    assert int(augment.decode_ratio(tf.constant(image_scale))) == ratio
    fields = {"encoded": tf.constant(jpeg(image_with_rectangle(480, 640, (100, 200, 300, 520))))}
    window = tf.constant([37, 51, 480 - 37, 640 - 51])  # an offset that is not a multiple of the ratio
    results = []
    for r in (1, ratio):
        pixels, offset = InputPipeline._decode(fields, window, (480, 640), tf.constant(r))
        image, boxes = augment.resize_window(pixels, tf.constant([[100.0, 200.0, 300.0, 520.0]]), offset,
                                             tf.constant(image_scale), (256, 256), tf.constant(r))
        results.append((image.numpy().astype(float), boxes.numpy()[0], pixels.shape))
    (full, full_box, full_shape), (reduced, reduced_box, reduced_shape) = results
    assert reduced_shape[0] < full_shape[0] / (ratio / 1.5)  # really decoded smaller
    # The window snaps outwards to the ratio's grid: less than a decoded pixel more on each side.
    assert np.abs(np.subtract(full.shape, reduced.shape)).max() <= 1
    np.testing.assert_allclose(reduced_box, full_box, atol=0.6)
    assert red_fraction(reduced, reduced_box) >= max(0.9, red_fraction(full, full_box) - 0.05)
    height, width = min(full.shape[0], reduced.shape[0]), min(full.shape[1], reduced.shape[1])
    assert np.abs(full[:height, :width] - reduced[:height, :width]).mean() < 3.0


def test_augmented_boxes_stay_on_their_objects(rectangles):
    pipeline = InputPipeline(rectangles, labeler(128), Augmentation(jitter_min=0.5, jitter_max=1.8), seed=3,
                             deterministic=True)
    batches = pipeline.train(batch_size=4).take(6)
    checked = 0
    for images, targets in batches:
        assert images.shape == (4, 128, 128, 3) and images.dtype == tf.uint8  # the model normalizes
        assert targets["cls_targets_3"].shape == (4, 16, 16, 9)
        for image in images.numpy():
            red = (image[..., 0] > 200) & (image[..., 1] < 60) & (image[..., 2] < 60)
            if red.sum() < 30:
                continue  # the crop missed the rectangle
            ys, xs = np.nonzero(red)
            # the rectangle's pixels sit where the (only) positive anchors' encoded boxes say
            checked += 1
            assert ys.max() - ys.min() > 3 and xs.max() - xs.min() > 3
    assert checked >= 10


def test_box_targets_decode_to_the_object_in_the_augmented_image(rectangles):
    from effdet.data.targets import flatten_levels
    from effdet.model import box_coder

    lab = labeler(128)
    pipeline = InputPipeline(rectangles, lab, Augmentation(jitter_min=0.6, jitter_max=1.5), seed=7,
                             deterministic=True)
    images, targets = next(iter(pipeline.train(batch_size=8)))
    classes = flatten_levels(targets, "cls_targets", 3, 5, 1)[..., 0].numpy()
    codes = flatten_levels(targets, "box_targets", 3, 5, 4)
    decoded = box_coder.decode(codes, lab.anchors[None]).numpy()
    seen = 0
    for image, cls, boxes in zip(images.numpy(), classes, decoded):
        for box in boxes[cls == 0]:
            assert red_fraction(image, box) > 0.9, box
            seen += 1
    assert seen > 0


def test_two_ranks_read_disjoint_parts_that_cover_everything(rectangles, tmp_path):
    def ids(pattern, shard):
        pipeline = InputPipeline(pattern, labeler())
        return [s.decode() for _, t in pipeline.eval(batch_size=5, shard=shard) for s in t["source_id"].numpy()]

    single_file = tmp_path / "one.tfrecord"
    write_records(single_file, [rectangle_record(i) for i in range(7)])
    for pattern, total in ((rectangles, 12), (str(single_file), 7)):  # by file, then by record
        rank0, rank1 = ids(pattern, Shard(0, 2)), ids(pattern, Shard(1, 2))
        assert not set(rank0) & set(rank1)
        assert sorted(rank0 + rank1, key=int) == [str(i) for i in range(total)]


def test_training_shards_are_disjoint_and_cover_everything(rectangles, tmp_path):
    single_file = tmp_path / "one.tfrecord"
    write_records(single_file, [rectangle_record(i) for i in range(7)])
    for pattern, total in ((rectangles, 12), (str(single_file), 7)):  # whole files per worker, then records
        pipeline = InputPipeline(pattern, labeler())
        parts = [[r.numpy() for r in pipeline._records(Shard(i, 2), shuffle_files=False)] for i in range(2)]
        assert not set(parts[0]) & set(parts[1])
        assert len(set(parts[0]) | set(parts[1])) == total


def test_evaluating_the_first_n_images_gives_the_same_images_on_any_number_of_workers(rectangles):
    def ids(shard):
        pipeline = InputPipeline(rectangles, labeler())
        return [s.decode() for _, t in pipeline.eval(batch_size=2, shard=shard, max_examples=5)
                for s in t["source_id"].numpy()]

    alone = ids(Shard())
    assert len(alone) == 5
    assert sorted(ids(Shard(0, 2)) + ids(Shard(1, 2)), key=int) == sorted(alone, key=int)


def test_a_seed_fixes_order_and_augmentation(rectangles):
    def first_batches(seed):
        pipeline = InputPipeline(rectangles, labeler(), seed=seed, deterministic=True)
        return [images.numpy() for images, _ in pipeline.train(batch_size=3).take(3)]

    a, b, c = first_batches(1), first_batches(1), first_batches(2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c))


def test_resuming_at_an_example_continues_the_same_stream(rectangles):
    pipeline = InputPipeline(rectangles, labeler(), seed=5, deterministic=True)
    stream = [images.numpy() for images, _ in pipeline.train(batch_size=2).take(9)]  # crosses an epoch
    resumed = [images.numpy() for images, _ in pipeline.train(batch_size=2, start_example=10).take(4)]
    assert all(np.array_equal(x, y) for x, y in zip(stream[5:], resumed))


def test_eval_keeps_what_maps_detections_back_to_the_original_image(rectangles):
    pipeline = InputPipeline(rectangles, labeler(64))
    images, targets = next(iter(pipeline.eval(batch_size=2)))
    # 120x160 into 64x64: scale 0.4, the image fills 48x64 and the rest is padding
    np.testing.assert_allclose(targets["image_scale"].numpy(), [0.4, 0.4])
    np.testing.assert_array_equal(targets["original_size"].numpy()[0], [120, 160])
    np.testing.assert_allclose(targets["groundtruth_boxes"].numpy()[0, 0], [30, 40, 90, 100], atol=1e-3)
    assert targets["num_groundtruth"].numpy().tolist() == [1, 1]
    assert (targets["groundtruth_boxes"].numpy()[0, 1:] == -1).all()
    assert (images.numpy()[:, 48:] == 0).all()  # padding
    assert red_fraction(images.numpy()[0], np.array([30, 40, 90, 100]) * 0.4) == 1.0


def test_stride_padding_gives_the_square_images_without_their_padding_rows(rectangles):
    pipeline = InputPipeline(rectangles, labeler(128))  # levels 3-5: the coarsest stride is 32
    images, targets = next(iter(pipeline.eval(batch_size=2, padding="stride")))
    # 120x160 into 128x128: scale 0.8, the image fills 96x128, which is already a multiple of 32
    assert images.shape[1:] == (96, 128, 3)
    np.testing.assert_allclose(targets["image_scale"].numpy(), [0.8, 0.8])
    np.testing.assert_array_equal(targets["original_size"].numpy()[0], [120, 160])
    square, _ = next(iter(pipeline.eval(batch_size=2)))
    np.testing.assert_array_equal(images.numpy(), square.numpy()[:, :96])
    assert (square.numpy()[:, 96:] == 0).all()
    with pytest.raises(ValueError, match="padding must be one of"):
        pipeline.eval(batch_size=2, padding="rectangle")


def test_stride_padding_pads_a_batch_of_two_orientations_to_the_largest(tmp_path):
    write_records(tmp_path / "mixed.tfrecord", [rectangle_record(0), rectangle_record(1, height=160, width=120)])
    images, targets = next(iter(InputPipeline(str(tmp_path / "mixed.tfrecord"), labeler(128)).eval(
        batch_size=2, padding="stride")))
    # 120x160 → 96x128 and 160x120 → 128x96, both whole cells of stride 32: together they need 128x128
    assert images.shape[1:] == (128, 128, 3)
    np.testing.assert_array_equal(targets["original_size"].numpy(), [[120, 160], [160, 120]])
    assert images.numpy()[0, 96:].max() == 0 and images.numpy()[1, :, 96:].max() == 0
    assert images.numpy()[0, :96].max(axis=-1).min() > 0 and images.numpy()[1, :, :96].max(axis=-1).min() > 0


@pytest.mark.parametrize("resized, output, stride, expected", [
    ((77, 128), (128, 128), 32, (96, 128)),  # rounded up to whole cells of the coarsest level
    ((96, 128), (128, 128), 32, (96, 128)),  # already whole
    ((100, 40), (128, 128), 128, (128, 128)),  # never beyond the square input
    ((240, 320), (320, 320), 128, (256, 320)),  # lite0: 320 is no multiple of 128; capped like the square
])
def test_stride_padded_sizes(resized, output, stride, expected):
    size = augment.stride_padded_size(tf.constant(resized[0]), tf.constant(resized[1]), output, stride)
    assert tuple(int(s) for s in size) == expected


def test_png_records_and_records_without_sizes_are_read(tmp_path):
    array = image_with_rectangle(50, 60, (10, 10, 40, 50))
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    record = DetectionRecord(buffer.getvalue(), "9", -1, -1, boxes=np.array([[0.2, 1 / 6, 0.8, 50 / 60]]),
                             labels=[1], texts=["r"], is_crowd=[0], areas=[1200.0])
    write_records(tmp_path / "png.tfrecord", [record])
    images, targets = next(iter(InputPipeline(str(tmp_path / "png.tfrecord"), labeler(64)).eval(batch_size=1)))
    np.testing.assert_array_equal(targets["original_size"].numpy()[0], [50, 60])
    assert red_fraction(images.numpy()[0], np.array([10, 10, 40, 50]) * 64 / 60) == 1.0


def test_missing_files_are_an_error_naming_the_pattern_and_key(tmp_path):
    with pytest.raises(DataError, match=r"no files match .*nothing-\*.*data.train_file_pattern"):
        InputPipeline(os.path.join(str(tmp_path), "nothing-*"), labeler(), file_pattern_key="data.train_file_pattern")


def test_fake_input_has_the_shapes_of_real_input():
    from effdet.data.fake import FakeInput

    images, targets = next(iter(FakeInput(labeler(64), num_classes=4).train(batch_size=2)))
    assert images.shape == (2, 64, 64, 3)
    assert targets["cls_targets_3"].shape == (2, 8, 8, 9) and targets["box_targets_5"].shape == (2, 2, 2, 36)
    assert (targets["num_positives"].numpy() >= 1).all()


def test_autoaugment_and_grid_mask_keep_boxes_on_their_objects(rectangles):
    from effdet.data.targets import flatten_levels
    from effdet.model import box_coder

    lab = labeler(128)
    augmentation = Augmentation(jitter_min=0.8, jitter_max=1.2, autoaugment_policy="v0")
    pipeline = InputPipeline(rectangles, lab, augmentation, seed=11, deterministic=True)
    images, targets = next(iter(pipeline.train(batch_size=8)))
    classes = flatten_levels(targets, "cls_targets", 3, 5, 1)[..., 0].numpy()
    decoded = box_coder.decode(flatten_levels(targets, "box_targets", 3, 5, 4), lab.anchors[None]).numpy()
    # AutoAugment's cutout and colour ops may paint over part of an object: most of each box stays red
    fractions = [red_fraction(image, box) for image, cls, boxes in zip(images.numpy(), classes, decoded)
                 for box in boxes[cls == 0]]
    assert fractions and np.median(fractions) > 0.5
    def zero_fractions(grid_mask):
        pipeline = InputPipeline(rectangles, lab, Augmentation(1.0, 1.0, hflip=False, grid_mask=grid_mask), seed=2,
                                 deterministic=True)
        images, _ = next(iter(pipeline.train(batch_size=8)))
        return np.array([(image == 0).all(axis=-1).mean() for image in images.numpy()])

    extra = zero_fractions(True) - zero_fractions(False)  # padding is zero in both
    assert extra.min() >= 0 and extra.max() > 0.05  # some images got a grid of blanked squares


def test_training_images_keep_their_padding_bottom_right_whether_flipped_or_not(rectangles):
    # 120x160 at scale 0.5 of a 128 output: image scale 0.4, so the image fills 48x64 of 128x128
    pipeline = InputPipeline(rectangles, labeler(128), Augmentation(jitter_min=0.5, jitter_max=0.5), seed=1)
    images, _ = next(iter(pipeline.train(batch_size=8)))
    images = images.numpy()
    assert (images[:, 48:] == 0).all() and (images[:, :, 64:] == 0).all()
    red_left = [(image[..., 0] > 200)[:, :32].sum() > (image[..., 0] > 200)[:, 32:64].sum() for image in images]
    assert 0 < sum(red_left) < len(images)  # some flipped (rectangle at 40-100 of 160 is right of centre)


def distinct_records(folder, shards=2, per_shard=5):
    """Shards of images that differ from each other: each record's rectangle sits elsewhere."""
    for shard in range(shards):
        write_records(folder / f"distinct-{shard:05d}-of-{shards:05d}.tfrecord",
                      [rectangle_record(shard * per_shard + i, box=(10 + 6 * i, 12 + 9 * shard, 70 + 6 * i, 90))
                       for i in range(per_shard)])
    return str(folder / "distinct-*")


def stream_examples(pipeline, shard, position, steps):
    """{position: image} of what one worker's `steps` batches of train_stream hold."""
    found = {}
    for images, _, positions in pipeline.train_stream(2, shard, position).take(steps):
        for image, key in zip(images.numpy(), positions.numpy()):
            assert int(key) not in found
            found[int(key)] = image
    return found


def test_an_elastic_stream_trains_every_example_once_in_one_order_whatever_the_number_of_workers(tmp_path):
    """train_stream (hardware.elastic): three workers for two steps, then two from where they ended, see one
    global order, each place once, the same examples (records and augmentation) as one worker alone, and epochs
    whose places cover every record."""
    pipeline = InputPipeline(distinct_records(tmp_path), labeler(), seed=3, shuffle_buffer=4)
    alone = stream_examples(pipeline, Shard(), 0, 15)  # 30 places: three epochs of 10
    epoch = POSITIONS_PER_EPOCH
    assert sorted(alone) == [e * epoch + i for e in range(3) for i in range(10)]
    seen, position = {}, 0
    for count, steps in ((3, 2), (2, 4)):
        for rank in range(count):
            part = stream_examples(pipeline, Shard(rank, count), position, steps)
            assert not set(part) & set(seen)
            seen.update(part)
        position = max(seen) + 1
    assert sorted(seen) == sorted(alone)[:28]  # 3 × 2 × 2, then 2 × 4 × 2: nothing skipped or repeated
    for key, image in seen.items():
        np.testing.assert_array_equal(image, alone[key])
    # an epoch's places are its records, each once: the images of epoch 0 are ten different records
    assert len({alone[i].tobytes() for i in range(10)}) == 10
    assert split_position(position) == (2, 8)
    # a run that stopped at an epoch's end goes on with the next epoch
    after_epoch = stream_examples(pipeline, Shard(), 10, 1)
    assert sorted(after_epoch) == [epoch, epoch + 1]
    np.testing.assert_array_equal(after_epoch[epoch], alone[epoch])


def test_fake_input_gives_an_elastic_stream_its_positions():
    fake = FakeInput(labeler(), 3)
    positions = [p.numpy().tolist() for _, _, p in fake.train_stream(2, Shard(1, 3), position=12).take(2)]
    assert positions == [[13, 16], [19, 22]]
