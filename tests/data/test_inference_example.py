"""Images from files, for mode=infer: prepared exactly as evaluation prepares its images."""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from effdet.data.pipeline import inference_example, prepare_images


def encoded(size, fmt):
    picture = Image.new("RGB", size, (200, 100, 50))
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    return tf.constant(buffer.getvalue())


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP"])
def test_any_size_and_format_fits_the_input_with_padding_bottom_right(fmt):
    image, scale, size = inference_example(encoded((100, 50), fmt), (64, 64))  # PIL sizes are (width, height)
    assert image.dtype == tf.uint8 and image.shape == (64, 64, 3)
    assert float(scale) == pytest.approx(0.64) and size.numpy().tolist() == [50, 100]
    pixels = image.numpy().astype(int)
    assert np.abs(pixels[:32] - [200, 100, 50]).max() <= 6  # the picture: 50 × 0.64 = 32 rows
    assert pixels[32:].max() == 0  # padding


def test_a_large_jpeg_decoded_at_reduced_resolution_gives_the_same_pixels_kind():
    full, _, _ = inference_example(encoded((1024, 768), "JPEG"), (128, 128), reduced_decode=False)
    reduced, scale, _ = inference_example(encoded((1024, 768), "JPEG"), (128, 128), reduced_decode=True)
    assert float(scale) == pytest.approx(0.125)
    assert np.abs(full.numpy().astype(int) - reduced.numpy().astype(int)).max() <= 8


@pytest.mark.parametrize("pad_multiple, expected_shape", [(None, (128, 128, 3)), (32, (64, 128, 3))])
def test_decoded_batches_are_prepared_like_image_files(pad_multiple, expected_shape):
    """prepare_images (the SavedModel, the benchmark) on decoded pixels = inference_example on the file:
    150x70 fits 128x128 at 60x128 rows; eval.padding=stride pads it to 64 rows (levels up to 5), not 128."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (70, 150, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    from_file, scale, size = inference_example(tf.constant(buffer.getvalue()), (128, 128), reduced_decode=False,
                                               pad_multiple=pad_multiple)
    batch, scales, sizes = prepare_images(tf.constant(pixels[None]), (128, 128), pad_multiple)
    assert tuple(from_file.shape) == expected_shape and tuple(batch.shape[1:]) == expected_shape
    np.testing.assert_array_equal(batch.numpy()[0], from_file.numpy())
    assert float(scales[0]) == pytest.approx(float(scale)) and sizes.numpy()[0].tolist() == size.numpy().tolist()
    assert batch.numpy()[0, 60:].max() == 0
