"""The exported SavedModel: uint8 images in, detections out, equal to the in-process model's."""
import io

import numpy as np
import pytest
import tensorflow as tf
from omegaconf import OmegaConf
from PIL import Image

from effdet.data.builder import build_labeler
from effdet.data.pipeline import inference_example
from effdet.eval.engines import TFLiteNetwork, tflite_interpreter
from effdet.eval.evaluate import detector
from effdet.eval.postprocess import flatten_outputs
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


def test_tflite_network_gives_the_keras_outputs_and_its_anchors(exported, tmp_path):
    cfg, model, labeler, _ = exported
    path = export_tflite(model, 6, image_size_of(cfg.model), labeler.anchors, str(tmp_path / "model.tflite"))
    pixels = pictures(128, 128, count=1, seed=3)
    with open(path, "rb") as handle:
        logits, codes = TFLiteNetwork(handle.read())(pixels)
    ops = {op["op_name"] for op in tflite_interpreter(model_path=path)._get_ops_details()}
    assert "DEPTHWISE_CONV_2D" in ops and not any(op.startswith("Flex") for op in ops)  # builtins: XNNPACK runs it
    class_outputs, box_outputs = model(pixels, training=False)
    np.testing.assert_allclose(logits.numpy(), flatten_outputs(class_outputs, 6).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(codes.numpy(), flatten_outputs(box_outputs, 4).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.load(str(tmp_path / "model.anchors.npy")), labeler.anchors)


def test_the_tflite_engine_detects_what_the_tensorflow_engine_detects(exported, monkeypatch):
    cfg, model, labeler, _ = exported
    from ai_edge_litert.interpreter import Interpreter

    invoked = []
    monkeypatch.setattr(Interpreter, "invoke", lambda self, run=Interpreter.invoke: invoked.append(run(self)))
    module = Detector(model, labeler.anchors, 6, image_size_of(cfg.model), cfg.eval)
    for batch in (2, 1, 2):  # one interpreter per batch size, each reused
        pixels, scales, sizes = module.prepare(tf.constant(pictures(90, 150, count=batch, seed=batch)))
        want = detector(model, labeler, 6, cfg.eval)(pixels, scales, sizes)
        got = detector(model, labeler, 6, OmegaConf.merge(cfg.eval, {"engine": "tflite"}))(pixels, scales, sizes)
        np.testing.assert_array_equal(got["num_detections"].numpy(), want["num_detections"].numpy())
        assert int(got["num_detections"][0]) > 0
        np.testing.assert_allclose(got["scores"].numpy(), want["scores"].numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["boxes"].numpy(), want["boxes"].numpy(), rtol=1e-4, atol=1e-2)
    assert len(invoked) == 3  # the network ran in TFLite, once a batch


def _png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
