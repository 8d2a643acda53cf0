"""Where the network runs when detecting (eval, infer, export.compare, the inference benchmark): `eval.engine`.

- `tensorflow`: the Keras model, in a `tf.function`.
- `tflite`: the network as a TensorFlow Lite model with static shapes (float32, float16 or int8:
  `eval.tflite_quantize`, or a `.tflite` file that mode=export wrote), run by LiteRT (the `ai-edge-litert`
  package, the TFLite runtime Google ships apart from TensorFlow since TF 2.16) and its XNNPACK CPU delegate.
  XNNPACK's depthwise and 1×1 kernels are faster than TensorFlow's oneDNN ones, batch norm is folded into the
  convolutions and no per-op executor runs between them. LiteRT's XNNPACK is faster than the one inside TF 2.15
  (`tf.lite.Interpreter`), with the same outputs (docs/benchmarks.md).
- `onnxruntime`: the network converted to ONNX by tf2onnx (or a `.onnx` file: `eval.onnx_file`), run by ONNX
  Runtime's CPU provider; both are the optional `onnx` extra.

Pre- and post-processing (resizing, top-k, NMS) stay in TensorFlow for all of them, since XNNPACK only takes
graphs whose shapes are all known when the interpreter is built. Each engine returns the network's outputs
flattened to logits [B, N, num_classes] and box codes [B, N, 4] (the contract of `effdet.eval.convert`).

An engine is registered as `factory(model, num_classes, image_size, eval_cfg, calibration) -> network`, called
once per input size; `calibration` is what an int8 conversion is calibrated on (None when the caller has none).
"""
import os
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from effdet.errors import ConfigError
from effdet.eval.convert import QUANTIZATIONS, Calibration, flat_network, import_optional, onnx_model, tflite_model
from effdet.registry import Registry

ENGINES = Registry("inference engine")
Network = Callable[[tf.Tensor], Tuple[tf.Tensor, tf.Tensor]]


def engine_threads() -> int:
    """The intra-op threads hardware set-up gave TensorFlow (0: all cores), for the runtimes beside it."""
    return tf.config.threading.get_intra_op_parallelism_threads() or len(os.sched_getaffinity(0))


@ENGINES.register("tensorflow")
def tensorflow_engine(model: tf.keras.Model, num_classes: int, image_size: Tuple[int, int], eval_cfg: Any = None,
                      calibration: Optional[Calibration] = None) -> Network:
    del image_size, eval_cfg, calibration  # the Keras model takes any size; the input pipeline gives the model's
    return tf.function(flat_network(model, num_classes), autograph=False)


def tflite_interpreter(**kwargs):
    """A LiteRT interpreter (`model_path=` or `model_content=`, `num_threads=`); XNNPACK is applied to it by
    default. Imported here: its 60 MB library is loaded only by jobs that run TFLite."""
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(**kwargs)


class TFLiteNetwork:
    """Runs a TFLite flatbuffer of the network contract on numpy batches with LiteRT and XNNPACK; one interpreter
    per batch size, so that alternating sizes (a last, smaller batch) do not re-plan the graph on every call.
    Quantized inputs and outputs are converted with the file's own scale and zero point (those mode=export
    writes need none: uint8 pixels with scale 1 and float32 outputs)."""

    def __init__(self, flatbuffer: bytes, threads: int = 0):
        self.flatbuffer = flatbuffer
        self.threads = threads or len(os.sched_getaffinity(0))
        self._interpreters: Dict[int, Any] = {}
        # Read without delegating or allocating: the batch sizes met later each get their own interpreter.
        from ai_edge_litert.interpreter import OpResolverType

        probe = tflite_interpreter(model_content=flatbuffer,
                                   experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        self.input = probe.get_input_details()[0]
        self.input_size = tuple(int(d) for d in self.input["shape"][1:3])
        self.outputs = probe.get_output_details()

    def _interpreter(self, batch: int):
        if batch not in self._interpreters:
            interpreter = tflite_interpreter(model_content=self.flatbuffer, num_threads=self.threads)
            images = interpreter.get_input_details()[0]
            interpreter.resize_tensor_input(images["index"], [batch, *images["shape"][1:]], strict=True)
            interpreter.allocate_tensors()
            self._interpreters[batch] = interpreter
        return self._interpreters[batch]

    def __call__(self, images) -> Tuple[tf.Tensor, tf.Tensor]:
        images = np.asarray(images)
        interpreter = self._interpreter(images.shape[0])
        interpreter.set_tensor(self.input["index"], _quantized(images, self.input))
        interpreter.invoke()
        # Copied once, straight from the interpreter's buffers (get_tensor would copy them twice: D0's logits
        # are large); the views die here, before the next invoke.
        return tuple(tf.convert_to_tensor(_dequantized(interpreter.tensor(output["index"])(), output))
                     for output in self.outputs)  # class logits, box codes


def _quantized(images: np.ndarray, detail: Dict[str, Any]) -> np.ndarray:
    dtype = detail["dtype"]
    scale, zero_point = detail["quantization"]
    if dtype == np.float32:
        return images.astype(np.float32)
    if scale in (0.0, 1.0) and zero_point == 0 and dtype == images.dtype:
        return images
    info = np.iinfo(dtype)
    return np.clip(np.round(images.astype(np.float32) / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantized(array: np.ndarray, detail: Dict[str, Any]) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if array.dtype == np.float32:
        return array
    return (array.astype(np.float32) - zero_point) * scale


@ENGINES.register("tflite")
def tflite_engine(model: tf.keras.Model, num_classes: int, image_size: Tuple[int, int], eval_cfg: Any,
                  calibration: Optional[Calibration] = None) -> Network:
    quantize = eval_cfg.tflite_quantize
    if quantize in QUANTIZATIONS:
        if quantize == "int8" and calibration is None:
            raise ConfigError("eval.tflite_quantize=int8 converts the network here and needs calibration images, "
                              "which this job does not have: give the path of a model_int8.tflite instead")
        return TFLiteNetwork(tflite_model(model, num_classes, image_size, quantize, calibration), engine_threads())
    network = TFLiteNetwork(_read(quantize, "eval.tflite_quantize"), engine_threads())
    check_network_file(quantize, "eval.tflite_quantize", network.input_size, image_size)
    return network


class OnnxNetwork:
    """Runs an ONNX model of the network contract with ONNX Runtime's CPU provider."""

    def __init__(self, model: bytes, threads: int = 0):
        ort = import_optional("onnxruntime", "eval.engine=onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.input_size = tuple(self.input.shape[1:3])
        names = [output.name for output in self.session.get_outputs()]
        self.output_names = ["logits", "box_codes"] if {"logits", "box_codes"} <= set(names) else names

    def __call__(self, images) -> Tuple[tf.Tensor, tf.Tensor]:
        images = np.asarray(images)
        if self.input.type != "tensor(uint8)":
            images = images.astype(np.float32)
        return tuple(tf.convert_to_tensor(output)
                     for output in self.session.run(self.output_names, {self.input.name: images}))


@ENGINES.register("onnxruntime")
def onnxruntime_engine(model: tf.keras.Model, num_classes: int, image_size: Tuple[int, int], eval_cfg: Any,
                       calibration: Optional[Calibration] = None) -> Network:
    del calibration
    if not eval_cfg.onnx_file:
        import_optional("onnxruntime", "eval.engine=onnxruntime")  # before a conversion it would not use
        return OnnxNetwork(onnx_model(model, num_classes, image_size), engine_threads())
    network = OnnxNetwork(_read(eval_cfg.onnx_file, "eval.onnx_file"), engine_threads())
    check_network_file(eval_cfg.onnx_file, "eval.onnx_file", network.input_size, image_size)
    return network


def _read(path: str, key: str) -> bytes:
    if not os.path.isfile(path):
        raise ConfigError(f"{key}={path}: no such file")
    with open(path, "rb") as handle:
        return handle.read()


def check_network_file(path: str, key: str, file_size: Tuple[int, ...], image_size: Tuple[int, int]) -> None:
    """A network file runs at the one input size it was exported for, which must be this job's."""
    if tuple(file_size) != tuple(image_size):
        raise ConfigError(f"{key}={path} takes {file_size[0]}x{file_size[1]} images but this job's network runs at "
                          f"{image_size[0]}x{image_size[1]}: set model.image_size to the export's (and "
                          "eval.padding=square, the export's padding)")
