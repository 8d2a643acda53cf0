"""The exported SavedModel: uint8 images in, detections out, equal to the in-process model's."""
import io

import numpy as np
import pytest
import tensorflow as tf
from omegaconf import OmegaConf
from PIL import Image

from effdet.data.builder import build_labeler
from effdet.data.pipeline import inference_example, prepare_images
from effdet.eval.convert import tflite_model, tflite_ops
from effdet.eval.engines import TFLiteNetwork
from effdet.eval.evaluate import detector
from effdet.eval.postprocess import flatten_outputs, input_extent
from effdet.model.builder import build_model, image_size_of
from effdet.modes.export import Detector
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


def test_tflite_network_gives_the_keras_outputs(exported):
    cfg, model, labeler, _ = exported
    flatbuffer = tflite_model(model, 6, image_size_of(cfg.model))
    pixels = pictures(128, 128, count=1, seed=3)
    logits, codes = TFLiteNetwork(flatbuffer)(pixels)
    ops = tflite_ops(flatbuffer)
    assert "DEPTHWISE_CONV_2D" in ops and not any(op.startswith("Flex") for op in ops)  # builtins: XNNPACK runs it
    class_outputs, box_outputs = model(pixels, training=False)
    np.testing.assert_allclose(logits.numpy(), flatten_outputs(class_outputs, 6).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(codes.numpy(), flatten_outputs(box_outputs, 4).numpy(), rtol=1e-4, atol=1e-4)
    assert logits.shape[1] == labeler.anchors.shape[0]  # in anchor order


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
        assert int(got["num_detections"][0]) > 0
        assert_same_detections(got, want)
    assert len(invoked) == 3  # the network ran in TFLite, once a batch


def test_stride_padding_detects_on_the_image_alone_with_the_anchors_of_its_size():
    """eval.padding=stride: the network runs at 96x128 for 90x150 pictures (levels up to 5, fitted into
    128x128 at 77x128), both engines agree there, and the boxes are in the pictures' own pixels."""
    cfg = compose(["model=efficientdet-lite0", "data=shapes", "model.image_size=128", "model.fpn_num_filters=16",
                   "model.fpn_cell_repeats=1", "model.box_class_repeats=1", "model.max_level=5",
                   "eval.padding=stride"])
    model = build_model(cfg.model, 6)
    labeler = build_labeler(cfg.model)
    pixels, scales, sizes = prepare_images(tf.constant(pictures(90, 150)), image_size_of(cfg.model),
                                           labeler.coarsest_stride)
    assert tuple(pixels.shape[1:3]) == (96, 128)
    anchors = labeler.anchors_at((96, 128))
    assert anchors.shape[0] == 9 * (12 * 16 + 6 * 8 + 3 * 4)  # levels 3-5 of a 96x128 input
    np.testing.assert_allclose(input_extent(anchors).numpy(), [96, 128])
    want = detector(model, labeler, 6, cfg.eval)(pixels, scales, sizes)
    got = detector(model, labeler, 6, OmegaConf.merge(cfg.eval, {"engine": "tflite"}))(pixels, scales, sizes)
    assert int(want["num_detections"][0]) > 0
    assert_same_detections(got, want)
    boxes = want["boxes"].numpy()
    assert boxes[..., 2].max() <= 90 and boxes[..., 3].max() <= 150


def assert_same_detections(got, want, score_tolerance=1e-4, box_tolerance=1e-2):
    """Both engines found the same detections: as many per image, the same scores in the same order, and each
    detection's class and box among those of the other engine's detections of (nearly) the same score. The
    engines' float rounding may swap two detections whose scores tie within it, so boxes are not compared
    position by position."""
    got, want = ({key: np.asarray(value) for key, value in d.items()} for d in (got, want))
    np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=score_tolerance, atol=1e-5)
    for b, count in enumerate(want["num_detections"]):
        unmatched = list(range(count))
        for i in range(count):
            candidates = [j for j in unmatched
                          if abs(want["scores"][b, j] - got["scores"][b, i]) <= score_tolerance
                          and want["classes"][b, j] == got["classes"][b, i]]
            distances = [np.abs(want["boxes"][b, j] - got["boxes"][b, i]).max() for j in candidates]
            assert distances and min(distances) <= box_tolerance, (b, i, got["boxes"][b, i])
            unmatched.remove(candidates[int(np.argmin(distances))])


def _png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_quantized_forms_need_the_tflite_export_and_are_each_written_once():
    from effdet.errors import ConfigError
    from effdet.modes.export import quantizations_of

    with pytest.raises(ConfigError, match=r"export.quantize=int8 names TFLite forms: add export.tflite=true"):
        quantizations_of(compose(["export.quantize=int8"]).export)
    assert quantizations_of(compose(["export.tflite=true", "export.quantize=[int8,none,int8]"]).export) == \
        ["int8", "none"]
    assert quantizations_of(compose([]).export) == ["none"]  # export.tflite=false then writes none of them
