"""The network in the forms it is deployed in: TensorFlow Lite in float32, float16 or full-integer int8, and
ONNX. Every form has one contract: images [B, H, W, 3] uint8 at the model's input size (resized and padded as
the input pipeline does) → class logits [B, N, num_classes] float32, then box codes [B, N, 4] float32, in
anchor order; anchors, resizing, decoding and NMS stay outside (`effdet.eval.engines` runs the forms,
`mode=export` writes them).
"""
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from effdet.data.builder import build_input
from effdet.data.pipeline import Shard
from effdet.data.sources import DataSource
from effdet.data.targets import AnchorLabeler
from effdet.errors import ConfigError
from effdet.eval.postprocess import flatten_outputs
from effdet.model.builder import image_size_of

QUANTIZATIONS = ("none", "float16", "int8")
ONNX_OPSET = 17


@dataclass
class Calibration:
    """What an int8 conversion is calibrated on: `images(size)` yields uint8 images [1, H, W, 3] at that input
    size, prepared as evaluation prepares them. `fallback`: ops without an integer kernel stay in float
    instead of failing the conversion."""

    images: Callable[[Tuple[int, int]], Iterable[np.ndarray]]
    fallback: bool = False


# An int8 network's outputs are clipped to where detections are decided, so that their 256 steps are spent
# there rather than on the far tails of the background anchors: a logit under -8 is a score under 0.0004 (below
# eval.score_threshold's default), one over 8 a score over 0.9996; a box code beyond ±4 moves a box's centre
# by 4 anchor sizes or scales it 55 times, which no anchor that overlaps its object needs.
INT8_LOGIT_LIMIT = 8.0
INT8_BOX_CODE_LIMIT = 4.0


def flat_network(model: tf.keras.Model, num_classes: int, clip: bool = False) -> Callable:
    """Images at the model's input size → (logits [B, N, num_classes], box codes [B, N, 4]); `clip`: to the
    int8 network's output ranges."""
    def run(images):
        class_outputs, box_outputs = model(images, training=False)
        logits, codes = flatten_outputs(class_outputs, num_classes), flatten_outputs(box_outputs, 4)
        if clip:
            logits = tf.clip_by_value(logits, -INT8_LOGIT_LIMIT, INT8_LOGIT_LIMIT)
            codes = tf.clip_by_value(codes, -INT8_BOX_CODE_LIMIT, INT8_BOX_CODE_LIMIT)
        return logits, codes

    return run


def network_function(model: tf.keras.Model, num_classes: int, image_size: Tuple[int, int],
                     dtype: tf.DType = tf.uint8, clip: bool = False):
    """The flat network as a concrete function of images [None, H, W, 3] of `dtype`. The batch is left open and
    fixed by each runtime before planning: a batch of 1 baked into the graph would also bake it into the
    flattening reshapes."""
    signature = tf.TensorSpec([None, *image_size, 3], dtype, name="images")
    return tf.function(flat_network(model, num_classes, clip), input_signature=[signature],
                       autograph=False).get_concrete_function()


def tflite_model(model: tf.keras.Model, num_classes: int, image_size: Tuple[int, int], quantize: str = "none",
                 calibration: Optional[Calibration] = None) -> bytes:
    """A TFLite flatbuffer of the network, builtin ops only (no Flex), batch norm folded into the convolutions.

    quantize: "none" (float32), "float16" (float16 weights, dequantized once when the interpreter is built;
    computation in float32), "int8" (full-integer post-training quantization calibrated on `calibration`:
    int8 kernels throughout, the input uint8 pixels with scale 1 and zero point 0, the outputs clipped to
    ±INT8_LOGIT_LIMIT and ±INT8_BOX_CODE_LIMIT and dequantized to float32 in the graph)."""
    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"quantize={quantize!r} is not a TFLite quantization: one of {', '.join(QUANTIZATIONS)}")
    if quantize != "int8":
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [network_function(model, num_classes, image_size)])
        if quantize == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        return _convert(converter)
    if calibration is None:
        raise ValueError("an int8 conversion needs calibration images")
    # The int8 graph is traced on float32 pixels: traced on uint8, it would begin with a CAST, which has no
    # int8 kernel. The converter then makes its input uint8 again (inference_input_type).
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [network_function(model, num_classes, image_size, tf.float32, clip=True)])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image] for image in _pinned_range(calibration.images(image_size)))
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.float32
    if not calibration.fallback:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    flatbuffer = _convert(converter)
    # Checked here: the converter leaves an op without an integer kernel in float32 even when told int8 only.
    kept = float_ops_of(tflite_ops(flatbuffer))
    if kept and not calibration.fallback:
        raise ConfigError(f"the int8 network keeps float32 ops, which have no integer kernel: {', '.join(kept)}; "
                          "export.int8_fallback=true accepts them (they run in float32 between the int8 ops)")
    return flatbuffer


def tflite_ops(flatbuffer: bytes) -> Dict[str, List[str]]:
    """The flatbuffer's op names → the sorted dtypes of their inputs, read before any delegate takes them.
    LiteRT is imported here: its library is loaded only by jobs that use TFLite."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=flatbuffer,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    found: Dict[str, set] = {}
    for op in interpreter._get_ops_details():
        found.setdefault(op["op_name"], set()).update(
            np.dtype(interpreter._get_tensor_details(index, 0)["dtype"]).name for index in op["inputs"] if index >= 0)
    return {name: sorted(types) for name, types in found.items()}


def float_ops_of(ops: Dict[str, List[str]]) -> List[str]:
    """The ops of a quantized network that compute in float32: all but those converting at its edges."""
    return sorted(name for name, types in ops.items() if "float32" in types and name not in ("QUANTIZE", "DEQUANTIZE"))


def _pinned_range(images: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """The calibration images as float32, the first with one pixel at 0 and one at 255: the input's calibrated
    range is then exactly [0, 255], so that its uint8 quantization is the identity and raw pixels go in as
    they are. Two pixels of one image move no other range measurably."""
    count = 0
    for image in images:
        image = np.array(image, np.float32)
        if count == 0:
            image[0, 0, 0, :] = 0.0
            image[0, -1, -1, :] = 255.0
        count += 1
        yield image
    if count == 0:
        raise ConfigError("the int8 calibration has no images: the train split gave none")


def _convert(converter) -> bytes:
    # Converted from the frozen graph: given the Keras model instead, the converter saves it as a SavedModel
    # first, tracing every layer again, which costs many times the conversion itself.
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # it would advise passing the model, which is what we avoid
    try:
        with warnings.catch_warnings():
            # int8: the uint8 input's statistics are the calibration's (TF1's quantized_input_stats are not used)
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
            return converter.convert()
    finally:
        logger.setLevel(level)


def onnx_model(model: tf.keras.Model, num_classes: int, image_size: Tuple[int, int], opset: int = ONNX_OPSET
               ) -> bytes:
    """An ONNX model of the network (tf2onnx), input `images` uint8 [batch, H, W, 3] with the batch dynamic,
    outputs `logits` and `box_codes`."""
    tf2onnx = import_optional("tf2onnx", "ONNX export (export.onnx=true)")
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    network = flat_network(model, num_classes)

    def named(images):
        logits, codes = network(images)
        return tf.identity(logits, name="logits"), tf.identity(codes, name="box_codes")

    signature = tf.TensorSpec([None, *image_size, 3], tf.uint8, name="images")
    function = tf.function(named, input_signature=[signature], autograph=False).get_concrete_function()
    # Frozen first: the function's captured constants (the pixel mean and deviation) would otherwise become
    # extra graph inputs.
    frozen = convert_variables_to_constants_v2(function)
    inputs = [tensor.name for tensor in frozen.inputs]
    outputs = [tensor.name for tensor in frozen.outputs]
    proto, _ = tf2onnx.convert.from_graph_def(frozen.graph.as_graph_def(), input_names=inputs, output_names=outputs,
                                              opset=opset)
    renames = {old: new for old, new in zip([*inputs, *outputs], ["images", "logits", "box_codes"])}
    for node in proto.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for value in [*proto.graph.input, *proto.graph.output]:
        value.name = renames.get(value.name, value.name)
    return proto.SerializeToString()


def import_optional(name: str, needed_for: str):
    """Imports an optional dependency, or says in one line how to install it."""
    try:
        return __import__(name)
    except ImportError as error:
        raise ConfigError(f"{needed_for} needs the Python package '{name}', which is not installed: "
                          "pip install -e '.[onnx]' (tools/venv.sh installs it)") from error


def calibration_of(cfg: Any, source: DataSource, labeler: AnchorLabeler) -> Calibration:
    """The first export.calibration_samples images of the data config's train split, prepared as evaluation
    prepares them (fitted into the model's input, padded to the square), one per batch."""
    count = cfg.export.calibration_samples
    square = image_size_of(cfg.model)

    def images(size: Tuple[int, int]) -> Iterator[np.ndarray]:
        pipeline = build_input(cfg.data, source, labeler, "train")
        if source.fake:  # random pictures: no eval preparation to copy
            batches = (images for images, _ in pipeline.train(1).take(count))
        else:
            batches = (images for images, _ in pipeline.eval(1, Shard(), count, "square"))
        for batch in batches:
            if tuple(size) != tuple(square):  # eval.padding=stride: a network per input size, calibrated at it
                batch = tf.cast(tf.image.resize(tf.cast(batch, tf.float32), size) + 0.5, tf.uint8)
            yield batch.numpy()

    return Calibration(images, fallback=cfg.export.int8_fallback)
