"""AutoAugment for detection: boxes follow the objects through the geometric operations, bbox-only
operations stay inside their boxes, colour operations leave boxes alone, a seed fixes everything."""
import numpy as np
import pytest
import tensorflow as tf

from effdet.data import autoaugment as aa
from effdet.errors import ConfigError

HEIGHT, WIDTH = 200, 300  # not square, so that x and y cannot be swapped unnoticed
BOX = (60, 80, 140, 170)


def red_on_grey(box=BOX, height=HEIGHT, width=WIDTH):
    image = np.full([height, width, 3], 128, np.float32)
    ymin, xmin, ymax, xmax = box
    image[ymin:ymax, xmin:xmax] = (255, 0, 0)
    return image, np.array([box], np.float32)


def red_mask(image):
    image = np.asarray(image)
    return image[..., 0] - image[..., 1] > 100


def coverage(image, box):
    """Fraction of red pixels whose centre lies in `box`, and the red pixels' extent."""
    ys, xs = np.nonzero(red_mask(image))
    ymin, xmin, ymax, xmax = box
    inside = (ys + 0.5 >= ymin) & (ys + 0.5 <= ymax) & (xs + 0.5 >= xmin) & (xs + 0.5 <= xmax)
    return inside.mean(), (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)


def area(box):
    return max(box[2] - box[0], 0) * max(box[3] - box[1], 0)


def seed(i):
    return tf.constant([7, i], tf.int64)


# --- geometry ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pixels", [50.0, -70.0])
def test_translate_x_moves_the_box_with_the_object(pixels):
    image, boxes = red_on_grey()
    out, moved = aa.translate_x_bbox(image, boxes, pixels)
    moved = moved.numpy()[0]
    np.testing.assert_allclose(moved, [60, 80 + pixels, 140, 170 + pixels])
    fraction, extent = coverage(out, moved)
    assert fraction >= 0.99
    assert area(moved) <= 1.2 * area(extent)
    assert out.shape == image.shape


def test_translate_by_magnitude_uses_the_papers_range():
    box = (60, 120, 140, 170)  # stays in the image 100 px to either side
    image, boxes = red_on_grey(box)
    shifts = set()
    for i in range(6):
        out, moved = aa.apply_op("TranslateX_BBox", image, boxes, seed(i), magnitude=4)
        shift = moved.numpy()[0, 1] - box[1]
        shifts.add(shift)
        assert moved.numpy()[0, 3] - box[3] == shift
        _, extent = coverage(out, moved.numpy()[0])
        assert extent[1] == box[1] + shift
    assert shifts == {-100.0, 100.0}  # 4/10 of 250 px, in a random direction


def test_translate_out_of_the_image_leaves_a_zero_area_box_clipped_to_the_image():
    image, boxes = red_on_grey()
    out, moved = aa.translate_x_bbox(image, boxes, 250.0)
    moved = moved.numpy()[0]
    assert moved[1] == moved[3] == WIDTH
    assert not red_mask(out).any()
    out, moved = aa.translate_y_bbox(image, boxes, -150.0)
    assert moved.numpy()[0, 0] == moved.numpy()[0, 2] == 0.0


@pytest.mark.parametrize("op, level", [(aa.shear_y_bbox, 0.25), (aa.shear_y_bbox, -0.3), (aa.shear_x_bbox, 0.2),
                                       (aa.rotate_bbox, 30.0), (aa.rotate_bbox, -17.0)])
def test_shear_and_rotate_boxes_cover_the_object(op, level):
    image, boxes = red_on_grey()
    out, moved = op(image, boxes, level)
    moved = moved.numpy()[0]
    fraction, extent = coverage(out, moved)
    assert fraction >= 0.9
    assert area(moved) <= 1.2 * area(extent)  # the bounding box of the moved corners, not more
    assert area(moved) > 1.05 * area(BOX) or op is aa.shear_y_bbox  # it did turn (shear y keeps the area)
    assert np.all(np.asarray(out) >= 0) and np.all(np.asarray(out) <= 255)


def test_rotate_turns_about_the_centre():
    image, boxes = red_on_grey(box=(90, 140, 110, 160))  # centred on (100, 150)
    _, moved = aa.rotate_bbox(image, boxes, 45.0)
    half = 10 * np.sqrt(2)
    np.testing.assert_allclose(moved.numpy()[0], [100 - half, 150 - half, 100 + half, 150 + half], atol=1e-3)


def test_boxes_of_examples_without_objects_stay_empty():
    image, _ = red_on_grey()
    empty = tf.zeros([0, 4])
    for op, level in [(aa.translate_x_bbox, 30.0), (aa.shear_x_bbox, 0.1), (aa.rotate_bbox, 10.0)]:
        assert op(image, empty, level)[1].shape == (0, 4)
    assert aa.translate_y_only_bboxes(image, empty, 20.0, seed(0), 1.0).shape == image.shape


# --- bbox-only -----------------------------------------------------------------------------------------

def test_translate_only_bboxes_moves_the_content_inside_the_box_only():
    rng = np.random.RandomState(0)
    image = rng.uniform(0, 255, [HEIGHT, WIDTH, 3]).astype(np.float32)
    boxes = np.array([[40, 50, 120, 130], [150, 200, 190, 280]], np.float32)
    out, kept = aa.apply_op("TranslateY_Only_BBoxes", image, boxes, seed(0), magnitude=5, probability=0.0)
    np.testing.assert_array_equal(out, image)  # per-box probability 0: nothing happens

    out = aa.translate_y_only_bboxes(image, boxes, 20.0, seed(0), probability=1.0).numpy()
    inside = np.zeros([HEIGHT, WIDTH], bool)
    for ymin, xmin, ymax, xmax in boxes.astype(int):
        inside[ymin:ymax, xmin:xmax] = True
        np.testing.assert_array_equal(out[ymin + 20:ymax, xmin:xmax], image[ymin:ymax - 20, xmin:xmax])
        np.testing.assert_array_equal(out[ymin:ymin + 20, xmin:xmax], aa.REPLACE)
    np.testing.assert_array_equal(out[~inside], image[~inside])

    up = aa.translate_y_only_bboxes(image, boxes[:1], -15.0, seed(0), probability=1.0).numpy()
    np.testing.assert_array_equal(up[40:105, 50:130], image[55:120, 50:130])
    np.testing.assert_array_equal(up[105:120, 50:130], aa.REPLACE)


def test_translate_only_bboxes_keeps_the_boxes_and_chooses_boxes_with_a_third_of_the_probability():
    image = np.random.RandomState(1).uniform(0, 255, [32, 32, 3]).astype(np.float32)
    boxes = np.array([[4, 4, 28, 28]], np.float32)

    @tf.function
    def run(i):
        return aa.apply_op("TranslateY_Only_BBoxes", image, boxes, tf.stack([tf.constant(3, tf.int64), i]),
                           magnitude=2, probability=0.6)

    changed = 0
    for i in range(300):
        out, kept = run(tf.constant(i, tf.int64))
        np.testing.assert_array_equal(kept, boxes)
        changed += int(not np.array_equal(out, image))
    assert 0.12 < changed / 300 < 0.28  # 0.6 / 3 per box


# --- colour --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["Equalize", "Color", "Sharpness", "Cutout"])
def test_pixel_operations_keep_boxes_and_range(name):
    rng = np.random.RandomState(2)
    image = np.clip(rng.normal(120, 60, [HEIGHT, WIDTH, 3]), 0, 255).astype(np.float32)
    boxes = np.array([[10, 20, 50, 90], [0, 0, HEIGHT, WIDTH], [100, 100, 100, 150]], np.float32)
    out, kept = aa.apply_op(name, image, boxes, seed(0), magnitude=10)
    np.testing.assert_array_equal(kept, boxes)
    out = out.numpy()
    assert out.shape == image.shape
    assert out.min() >= 0 and out.max() <= 255
    assert np.abs(out - image).mean() > 1.0


def test_cutout_fills_a_square_cut_by_the_image_edges():
    image = np.full([HEIGHT, WIDTH, 3], 10.0, np.float32)
    clipped = 0
    for i in range(12):
        out = aa.cutout(image, seed(i), 30).numpy()
        assert out.shape == image.shape
        ys, xs = np.nonzero(np.all(out == aa.REPLACE, axis=-1))
        height, width = ys.max() + 1 - ys.min(), xs.max() + 1 - xs.min()
        assert len(ys) == height * width  # one rectangle
        assert height <= 60 and width <= 60
        clipped += (height, width) != (60, 60)
        np.testing.assert_array_equal(np.delete(out.reshape(-1, 3), ys * WIDTH + xs, axis=0), 10.0)
    assert clipped < 12


def test_equalize_spreads_a_narrow_histogram_monotonically():
    rng = np.random.RandomState(3)
    image = rng.uniform(100, 140, [64, 64, 3]).astype(np.float32)
    out = aa.equalize(image).numpy()
    for c in range(3):
        order = np.argsort(image[..., c].ravel(), kind="stable")
        assert np.all(np.diff(out[..., c].ravel()[order]) >= 0)  # keeps the order of values
        assert out[..., c].max() - out[..., c].min() > 200
    flat = np.full([8, 8, 3], 77.0, np.float32)
    np.testing.assert_array_equal(aa.equalize(flat), flat)  # nothing to spread


def test_colour_and_sharpness_factors():
    rng = np.random.RandomState(4)
    image = rng.uniform(0, 255, [32, 48, 3]).astype(np.float32)
    grey = aa.color(image, 0.0).numpy()
    np.testing.assert_allclose(grey[..., 0], grey[..., 1], atol=1e-3)
    np.testing.assert_allclose(aa.color(image, 1.0), image, atol=1e-3)
    np.testing.assert_allclose(aa.sharpness(image, 1.0), image, atol=1e-3)
    smooth = aa.sharpness(image, 0.0).numpy()
    np.testing.assert_array_equal(smooth[0], image[0])  # border kept
    assert smooth[1:-1, 1:-1].std() < 0.8 * image[1:-1, 1:-1].std()
    assert aa.enhance_factor(6) == pytest.approx(1.18)


# --- policy --------------------------------------------------------------------------------------------

def test_same_seed_same_output_and_seeds_differ():
    image, boxes = red_on_grey()
    run = tf.function(lambda s: aa.autoaugment(image, boxes, s))
    outputs = []
    for i in range(8):
        first, second = run(seed(i)), aa.autoaugment(image, boxes, seed(i))
        np.testing.assert_array_equal(first[0], second[0])
        np.testing.assert_array_equal(first[1], second[1])
        np.testing.assert_array_equal(first[0], aa.autoaugment(image, boxes, tf.constant([7, i], tf.int32))[0])
        outputs.append(first[0].numpy().tobytes() + first[1].numpy().tobytes())
    assert len(set(outputs)) >= 3


def test_policy_runs_inside_tf_data_with_and_without_boxes():
    size = 128
    candidates = tf.constant([[10, 10, 60, 70], [30, 50, 120, 110], [0, 0, 128, 128]], tf.float32)

    def example(i):
        image = tf.random.stateless_uniform([size, size, 3], seed=tf.stack([i, i]), maxval=255.0)
        return image, candidates[:tf.cast(3 * (i % 2), tf.int32)], tf.stack([tf.constant(11, tf.int64), i])

    def augment(image, boxes, example_seed):
        image, boxes = aa.autoaugment(image, boxes, example_seed)
        return image, boxes, tf.shape(boxes)[0]

    dataset = tf.data.Dataset.range(16).map(example).map(augment, num_parallel_calls=2)
    images, boxes, counts = next(iter(dataset.padded_batch(16)))
    assert images.shape == (16, size, size, 3)
    assert np.all(np.isfinite(images)) and images.numpy().min() >= 0 and images.numpy().max() <= 255
    np.testing.assert_array_equal(counts, [0, 3] * 8)
    assert boxes.shape == (16, 3, 4)
    assert boxes.numpy().min() >= 0 and boxes.numpy().max() <= size
    ordered = boxes.numpy()
    assert np.all(ordered[..., 2] >= ordered[..., 0]) and np.all(ordered[..., 3] >= ordered[..., 1])


def test_unknown_policy_or_operation_is_a_config_error():
    image, boxes = red_on_grey()
    with pytest.raises(ConfigError, match="v0"):
        aa.autoaugment(image, boxes, seed(0), policy="v9")
    with pytest.raises(ConfigError, match="Equalize"):
        aa.apply_op("Equalise", image, boxes, seed(0), magnitude=1)


def test_every_policy_only_uses_known_operations():
    for name in aa.POLICIES:
        assert aa.check_policy(name)
    assert [len(sub) for sub in aa.POLICIES["v0"]] == [2, 2, 2, 2, 2]
