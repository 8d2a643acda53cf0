"""Where the network runs when detecting (eval, infer, the inference benchmark): `eval.engine`.

- `tensorflow`: the Keras model, in a `tf.function`.
- `tflite`: the same weights converted to a float32 TensorFlow Lite model with static shapes, run by LiteRT
  (the `ai-edge-litert` package, the TFLite runtime Google ships apart from TensorFlow since TF 2.16) and its
  XNNPACK CPU delegate. XNNPACK's depthwise and 1×1 kernels are faster than TensorFlow's oneDNN ones, batch
  norm is folded into the convolutions and no per-op executor runs between them. LiteRT's XNNPACK is faster
  than the one inside TF 2.15 (`tf.lite.Interpreter`), with the same outputs (docs/benchmarks.md). Pre-
  and post-processing (resizing, top-k, NMS) stay in TensorFlow, since XNNPACK only takes graphs whose shapes
  are all known when the interpreter is built.

Both return the network's outputs flattened to logits [B, N, num_classes] and box codes [B, N, 4].
"""
import os
from typing import Any, Callable, Dict, Tuple

import numpy as np
import tensorflow as tf

from effdet.eval.postprocess import flatten_outputs
from effdet.registry import Registry

ENGINES = Registry("inference engine")
Network = Callable[[tf.Tensor], Tuple[tf.Tensor, tf.Tensor]]


def flat_network(model: tf.keras.Model, num_classes: int) -> Callable:
    """uint8 images at the model's input size → (logits [B, N, num_classes], box codes [B, N, 4])."""
    def run(images):
        class_outputs, box_outputs = model(images, training=False)
        return flatten_outputs(class_outputs, num_classes), flatten_outputs(box_outputs, 4)

    return run


@ENGINES.register("tensorflow")
def tensorflow_engine(model: tf.keras.Model, num_classes: int, image_size: Tuple[int, int]) -> Network:
    del image_size  # the Keras model takes any size; the input pipeline gives the model's
    return tf.function(flat_network(model, num_classes), autograph=False)


def tflite_model(model: tf.keras.Model, num_classes: int, image_size: Tuple[int, int]) -> bytes:
    """A float32 TFLite flatbuffer of the network: input uint8 images [B, H, W, 3] (already resized and padded
    as the input pipeline does), outputs class logits [B, N, num_classes] then box codes [B, N, 4], in anchor
    order. Batch norm is folded into the convolutions by the converter."""
    network = flat_network(model, num_classes)
    # The batch is left open and fixed by each interpreter before planning (TFLiteNetwork): a batch of 1 baked
    # into the graph would also bake it into the flattening reshapes.
    signature = tf.TensorSpec([None, *image_size, 3], tf.uint8, name="images")
    function = tf.function(network, input_signature=[signature], autograph=False).get_concrete_function()
    # Converted from the frozen graph: given the Keras model as well, the converter saves it as a SavedModel
    # first, tracing every layer again, which costs many times the conversion itself.
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # it would advise passing the model, which is what we avoid
    try:
        return tf.lite.TFLiteConverter.from_concrete_functions([function]).convert()
    finally:
        logger.setLevel(level)


def tflite_interpreter(**kwargs):
    """A LiteRT interpreter (`model_path=` or `model_content=`, `num_threads=`); XNNPACK is applied to it by
    default. Imported here: its 60 MB library is loaded only by jobs that run TFLite."""
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(**kwargs)


class TFLiteNetwork:
    """Runs a `tflite_model` flatbuffer on numpy batches with LiteRT and XNNPACK; one interpreter per batch
    size, so that alternating sizes (a last, smaller batch) do not re-plan the graph on every call."""

    def __init__(self, flatbuffer: bytes, threads: int = 0):
        self.flatbuffer = flatbuffer
        self.threads = threads or len(os.sched_getaffinity(0))
        self._interpreters: Dict[int, Any] = {}

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
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
        interpreter.invoke()
        # Copied once, straight from the interpreter's buffers (get_tensor would copy them twice: D0's logits
        # are 17.7 MB a image); the views die here, before the next invoke.
        return tuple(tf.convert_to_tensor(interpreter.tensor(output["index"])())
                     for output in interpreter.get_output_details())  # class logits, box codes


@ENGINES.register("tflite")
def tflite_engine(model: tf.keras.Model, num_classes: int, image_size: Tuple[int, int]) -> Network:
    return TFLiteNetwork(tflite_model(model, num_classes, image_size),
                         tf.config.threading.get_intra_op_parallelism_threads())
