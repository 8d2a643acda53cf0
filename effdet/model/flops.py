"""Counting what a model costs: parameters and multiply-adds."""
from typing import Tuple

import numpy as np
import tensorflow as tf


def count_params(variables) -> int:
    return int(sum(np.prod(v.shape) for v in variables))


def count_flops(model: tf.keras.Model, image_size: Tuple[int, int]) -> int:
    """Multiply-adds of one forward pass at batch 1, as automl reports them: TensorFlow's profiler counts
    float operations of the inference graph, a multiply-add being two."""
    # plain Python control flow only: autograph would just slow the trace down
    function = tf.function(lambda images: model(images, training=False), autograph=False)
    graph = function.get_concrete_function(tf.TensorSpec([1, *image_size, 3], tf.float32)).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # the TF1 profiler warns about its own deprecated internals
    try:
        profile = tf.compat.v1.profiler.profile(graph=graph, options=options)
    finally:
        logger.setLevel(level)
    return int(profile.total_float_ops) // 2
