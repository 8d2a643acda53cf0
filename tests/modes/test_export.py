"""The exported SavedModel: uint8 images in, detections out, equal to the in-process model's."""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from effdet.data.builder import build_labeler
from effdet.data.pipeline import inference_example
from effdet.eval.evaluate import detector
from effdet.model.builder import build_model, image_size_of
from effdet.modes.export import Detector, export_tflite
from tests.conftest import compose


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cfg = compose(["model=efficientdet-lite0", "data=shapes", "model.image_size=128", "model.fpn_num_filters=16",
                   "model.fpn_cell_repeats=1", "model.box_class_repeats=1"])
    model = build_model(cfg.model, 6)
    labeler = build_labeler(cfg.model)
    module = Detector(model, labeler.anchors, 6, image_size_of(cfg.model), cfg.eval)
    directory = str(tmp_path_factory.mktemp("export") / "saved_model")
    tf.saved_model.save(module, directory, signatures={"serving_default": module.serve})
    return cfg, model, labeler, directory


def pictures(height, width, count=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("height, width", [(90, 150), (200, 120)])
def test_the_reloaded_saved_model_detects_what_the_model_in_process_detects(exported, height, width):
    cfg, model, labeler, directory = exported
    images = pictures(height, width)
    served = tf.saved_model.load(directory).signatures["serving_default"](images=tf.constant(images))

    detect = detector(model, labeler, 6, cfg.eval)  # the evaluation path: the input pipeline's preparation
    prepared = [inference_example(tf.constant(_png(image)), image_size_of(cfg.model), reduced_decode=False)
                for image in images]
    expected = detect(tf.stack([p[0] for p in prepared]), tf.stack([p[1] for p in prepared]),
                      tf.stack([p[2] for p in prepared]))
    np.testing.assert_array_equal(served["num_detections"].numpy(), expected["num_detections"].numpy())
    assert int(served["num_detections"][0]) > 0
    np.testing.assert_array_equal(served["classes"].numpy(), expected["classes"].numpy())
    np.testing.assert_allclose(served["scores"].numpy(), expected["scores"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(served["boxes"].numpy(), expected["boxes"].numpy(), rtol=1e-4, atol=1e-3)
    boxes = served["boxes"].numpy()
    assert boxes[..., 2].max() <= height and boxes[..., 3].max() <= width  # in the input's own pixels


def test_tflite_float32_model_runs_with_the_same_detections(exported, tmp_path):
    _, _, _, directory = exported
    path = export_tflite(directory, str(tmp_path / "model.tflite"))
    images = pictures(90, 150, count=1, seed=3)
    interpreter = tf.lite.Interpreter(model_path=path)
    runner = interpreter.get_signature_runner("serving_default")
    got = runner(images=images)
    want = tf.saved_model.load(directory).signatures["serving_default"](images=tf.constant(images))
    assert int(got["num_detections"][0]) == int(want["num_detections"][0]) > 0
    np.testing.assert_allclose(got["scores"], want["scores"].numpy(), rtol=1e-3, atol=1e-4)


def _png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
