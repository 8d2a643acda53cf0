"""The deployable forms of the network (TFLite float32 / float16 / int8, ONNX) and the engines that run them."""
import numpy as np
import pytest
import tensorflow as tf
from omegaconf import OmegaConf

from effdet.data.builder import build_labeler
from effdet.data.sources import build_source
from effdet.data.targets import AnchorLabeler
from effdet.errors import ConfigError
from effdet.eval import convert
from effdet.eval.convert import Calibration, calibration_of, float_ops_of, onnx_model, tflite_model, tflite_ops
from effdet.eval.engines import ENGINES, OnnxNetwork, TFLiteNetwork, _quantized
from effdet.eval.evaluate import detector
from effdet.eval.postprocess import flatten_outputs
from effdet.model.builder import build_model, image_size_of
from tests.conftest import compose
from tests.modes.test_export import assert_same_detections
from tests.train.test_trainer import SIZE, fit, make_trainer, tiny_detector

TINY = ["model=efficientdet-lite0", "data=shapes", "model.image_size=128", "model.fpn_num_filters=16",
        "model.fpn_cell_repeats=1", "model.box_class_repeats=1"]


def pictures(count, size=(128, 128), seed=0):
    """Smooth pictures with bright blobs: closer to photographs than noise, which no network sees in use."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[0], 0:size[1]]
    images = np.zeros((count, *size, 3), np.float32)
    for b in range(count):
        images[b] = rng.uniform(20, 90, 3)
        for _ in range(4):
            cy, cx, radius = rng.uniform(0, size[0]), rng.uniform(0, size[1]), rng.uniform(8, 30)
            images[b][(y - cy) ** 2 + (x - cx) ** 2 < radius ** 2] = rng.uniform(120, 255, 3)
    return images.astype(np.uint8)


def calibration(count=8, seed=100):
    return Calibration(lambda size: (pictures(1, size, seed + i) for i in range(count)))


@pytest.fixture(scope="module")
def tiny():
    cfg = compose(TINY)
    tf.keras.utils.set_random_seed(0)
    model = build_model(cfg.model, 6)
    model(pictures(1), training=False)
    return cfg, model, build_labeler(cfg.model)


@pytest.fixture(scope="module")
def int8_flatbuffer(tiny):
    cfg, model, _ = tiny
    return tflite_model(model, 6, image_size_of(cfg.model), "int8", calibration())


def keras_outputs(model, images):
    class_outputs, box_outputs = model(images, training=False)
    return flatten_outputs(class_outputs, 6).numpy(), flatten_outputs(box_outputs, 4).numpy()


def test_float16_weights_give_the_float32_outputs_closely(tiny):
    cfg, model, _ = tiny
    flatbuffer = tflite_model(model, 6, image_size_of(cfg.model), "float16")
    assert len(flatbuffer) < 0.6 * len(tflite_model(model, 6, image_size_of(cfg.model)))  # half-size weights
    images = pictures(2, seed=1)
    logits, codes = TFLiteNetwork(flatbuffer)(images)
    want_logits, want_codes = keras_outputs(model, images)
    np.testing.assert_allclose(logits.numpy(), want_logits, atol=2e-2, rtol=1e-2)
    np.testing.assert_allclose(codes.numpy(), want_codes, atol=2e-2, rtol=1e-2)


def test_int8_holds_integer_builtin_ops_only_with_uint8_pixels_in_and_float32_out(int8_flatbuffer):
    ops = tflite_ops(int8_flatbuffer)
    assert not float_ops_of(ops), ops
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD"} <= set(ops) and "ADD_N" not in ops
    assert not any(name.startswith("Flex") for name in ops)
    assert ops["CONV_2D"] == ["int32", "int8"]  # int8 activations and weights, int32 biases
    network = TFLiteNetwork(int8_flatbuffer)
    assert network.input["dtype"] == np.uint8 and network.input["quantization"] == (1.0, 0)  # raw pixels
    assert [output["dtype"] for output in network.outputs] == [np.float32, np.float32]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small detector overfitted on one batch: confident, well separated detections, as a trained network
    gives (an untrained one's top scores tie within the int8 rounding)."""
    trainer, data = make_trainer(tmp_path_factory.mktemp("train"), total_steps=400, lr=0.01, make_model=tiny_detector,
                                 steps_per_loop=50)
    fit(trainer, data)
    images, _ = next(iter(data(0)))
    labeler = AnchorLabeler((SIZE, SIZE), 3, 5, 3, [1.0, 2.0, 0.5], 4.0)
    return trainer.model, labeler, images


@pytest.fixture(scope="module")
def trained_int8(trained, tmp_path_factory):
    model, _, images = trained
    calibrated = Calibration(lambda size: (images[i:i + 1].numpy() for i in range(images.shape[0])))
    path = tmp_path_factory.mktemp("int8") / "model_int8.tflite"
    path.write_bytes(tflite_model(model, 3, (SIZE, SIZE), "int8", calibrated))
    return path


def test_int8_outputs_follow_the_float_network_within_their_clipped_ranges(trained, trained_int8):
    model, _, images = trained
    logits, codes = (output.numpy() for output in TFLiteNetwork(trained_int8.read_bytes())(images.numpy()))
    class_outputs, box_outputs = model(images, training=False)
    want_logits = np.clip(flatten_outputs(class_outputs, 3).numpy(), -8, 8)  # the int8 network's output ranges
    want_codes = np.clip(flatten_outputs(box_outputs, 4).numpy(), -4, 4)
    for got, want in ((logits, want_logits), (codes, want_codes)):
        assert got.shape == want.shape
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99
        assert np.abs(got - want).mean() < 0.01 * (want.max() - want.min())


def test_int8_top_detections_agree_with_the_float_network_once_trained(trained, trained_int8):
    model, labeler, images = trained
    path = trained_int8
    eval_cfg = compose(TINY).eval
    scales, sizes = tf.ones([images.shape[0]]), tf.constant([[SIZE, SIZE]] * images.shape[0])
    want = detector(model, labeler, 3, eval_cfg)(images, scales, sizes)
    got = detector(model, labeler, 3, OmegaConf.merge(eval_cfg, {"engine": "tflite", "tflite_quantize": str(path)})
                   )(images, scales, sizes)
    for b in range(images.shape[0]):
        assert float(want["scores"][b, 0]) > 0.5  # trained: confident
        for i in range(5):  # the float network's five best detections: the int8 one's best, in about that order
            box, label = want["boxes"][b, i].numpy(), want["classes"][b, i].numpy()
            found = [j for j in range(8) if got["classes"][b, j] == label
                     and np.abs(box - got["boxes"][b, j].numpy()).max() <= 2.0]  # pixels, of 64
            assert found, (b, i, box, label)
            assert abs(float(got["scores"][b, found[0]]) - float(want["scores"][b, i])) < 0.02


def test_an_op_without_an_integer_kernel_fails_int8_unless_fallback_is_allowed():
    class Floors(tf.keras.Model):
        def __init__(self):
            super().__init__()
            self.classes, self.boxes = tf.keras.layers.Conv2D(18, 3, padding="same"), tf.keras.layers.Conv2D(36, 1)

        def call(self, images, training=None):
            x = tf.cast(images, tf.float32) / 255.0
            return [tf.math.floor(self.classes(x) * 3.0)], [self.boxes(x)]

    with pytest.raises(ConfigError, match="keeps float32 ops.*FLOOR.*export.int8_fallback=true"):
        tflite_model(Floors(), 2, (16, 16), "int8", calibration(2))
    fallback = tflite_model(Floors(), 2, (16, 16), "int8", Calibration(calibration(2).images, fallback=True))
    assert "FLOOR" in float_ops_of(tflite_ops(fallback))


def test_a_bad_quantization_or_a_missing_calibration_is_refused(tiny):
    cfg, model, _ = tiny
    with pytest.raises(ConfigError, match="'int4' is not a TFLite quantization: one of none, float16, int8"):
        tflite_model(model, 6, image_size_of(cfg.model), "int4")
    with pytest.raises(ConfigError, match="eval.tflite_quantize=int8 .* needs calibration images"):
        ENGINES.get("tflite")(model, 6, image_size_of(cfg.model), OmegaConf.merge(cfg.eval, {
            "engine": "tflite", "tflite_quantize": "int8"}), None)
    with pytest.raises(ConfigError, match="no images"):
        tflite_model(model, 6, image_size_of(cfg.model), "int8", Calibration(lambda size: iter(())))


def test_a_network_file_of_another_input_size_or_model_is_refused(tiny, tmp_path):
    cfg, model, labeler = tiny
    path = tmp_path / "model.tflite"
    path.write_bytes(tflite_model(model, 6, (96, 96)))
    eval_cfg = OmegaConf.merge(cfg.eval, {"engine": "tflite", "tflite_quantize": str(path)})
    with pytest.raises(ConfigError, match=r"takes 96x96 images but this job's network runs at 128x128"):
        ENGINES.get("tflite")(model, 6, (128, 128), eval_cfg, None)
    with pytest.raises(ConfigError, match="no such file"):
        ENGINES.get("tflite")(model, 6, (128, 128), OmegaConf.merge(eval_cfg, {"tflite_quantize": "gone.tflite"}))
    other = build_model(compose([*TINY, "model.num_scales=2"]).model, 6)
    path.write_bytes(tflite_model(other, 6, (128, 128)))
    with pytest.raises(ConfigError, match="exported with another model or data config"):
        detector(model, labeler, 6, eval_cfg)(tf.constant(pictures(1)), tf.ones([1]), tf.constant([[128, 128]]))


def test_pixels_are_quantized_with_the_files_own_parameters():
    images = np.array([[0, 100, 255]], np.uint8)
    assert _quantized(images, {"dtype": np.uint8, "quantization": (1.0, 0)}) is images
    np.testing.assert_array_equal(_quantized(images, {"dtype": np.uint8, "quantization": (2.0, 10)}), [[10, 60, 138]])
    np.testing.assert_array_equal(_quantized(images, {"dtype": np.int8, "quantization": (1.0, -128)}),
                                  [[-128, -28, 127]])
    assert _quantized(images, {"dtype": np.float32, "quantization": (0.0, 0)}).dtype == np.float32


def test_onnx_runtime_detects_what_tensorflow_detects(tiny, tmp_path):
    cfg, model, labeler = tiny
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx_model(model, 6, image_size_of(cfg.model)))
    images = pictures(2, seed=5)
    network = OnnxNetwork(path.read_bytes())
    assert (network.input.name, network.input.type, network.output_names) == ("images", "tensor(uint8)",
                                                                              ["logits", "box_codes"])
    logits, codes = network(images)
    want_logits, want_codes = keras_outputs(model, images)
    np.testing.assert_allclose(logits.numpy(), want_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(codes.numpy(), want_codes, rtol=1e-4, atol=1e-4)
    scales, sizes = tf.ones([2]), tf.constant([[128, 128]] * 2)
    want = detector(model, labeler, 6, cfg.eval)(tf.constant(images), scales, sizes)
    for overrides in ({"engine": "onnxruntime", "onnx_file": str(path)}, {"engine": "onnxruntime"}):
        got = detector(model, labeler, 6, OmegaConf.merge(cfg.eval, overrides))(tf.constant(images), scales, sizes)
        assert int(got["num_detections"][0]) > 0
        assert_same_detections(got, want)


def test_a_missing_runtime_says_what_to_install(tiny, monkeypatch):
    cfg, model, _ = tiny
    real_import = __import__

    def without_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr("builtins.__import__", without_onnxruntime)
    with pytest.raises(ConfigError, match=r"eval.engine=onnxruntime needs the Python package 'onnxruntime'.*"
                                          r"pip install -e '.\[onnx\]'"):
        ENGINES.get("onnxruntime")(model, 6, (128, 128), OmegaConf.merge(cfg.eval, {"engine": "onnxruntime"}))


def test_calibration_takes_the_first_train_images_prepared_as_eval(tmp_path):
    cfg = compose([*TINY, "data.synthetic.num_train=8", "data.synthetic.num_val=2", "data.synthetic.image_size=96",
                   f"data.cache_dir={tmp_path}", "export.calibration_samples=3"])
    source = build_source(cfg.data)
    images = list(calibration_of(cfg, source, build_labeler(cfg.model)).images((128, 128)))
    assert len(images) == 3 and all(image.shape == (1, 128, 128, 3) and image.dtype == np.uint8 for image in images)
    assert all(image.std() > 5 for image in images)  # pictures, not padding
    smaller = list(calibration_of(cfg, source, build_labeler(cfg.model)).images((64, 96)))
    assert smaller[0].shape == (1, 64, 96, 3)
    assert not calibration_of(cfg, source, build_labeler(cfg.model)).fallback
    pinned = list(convert._pinned_range(iter(images)))
    assert pinned[0].min() == 0 and pinned[0].max() == 255 and pinned[0].dtype == np.float32


def test_fake_data_calibrates_on_its_random_pictures():
    cfg = compose([*TINY, "data=fake", "data.num_examples_per_epoch=8", "export.calibration_samples=2"])
    source = build_source(cfg.data)
    images = list(calibration_of(cfg, source, build_labeler(cfg.model)).images((128, 128)))
    assert len(images) == 2 and images[0].shape == (1, 128, 128, 3) and images[0].dtype == np.uint8
