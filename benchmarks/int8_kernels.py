"""What int8 buys on this CPU: the same small stacks of EfficientDet's two kinds of convolution, float32 and int8,
run by LiteRT's XNNPACK at batch 1, then whole networks. An int8 network cannot be faster than its convolutions are.

    .venv/bin/python benchmarks/int8_kernels.py [--runs 50] [--rounds 3] [--models efficientdet-lite0,efficientdet-d0]

Prints the CPU's model and the flags that int8 kernels use (AVX-512 VNNI / AVX-VNNI add the int8 dot-product
instruction; without it int8 products are widened to 16 bits first), then, per round, the median milliseconds of
each stack: four 1×1 convolutions (64↔256 channels at 80×80, the GEMMs that dominate the network) and four 3×3
depthwise ones (64 channels at 80×80); then each model's network (COCO's 90 classes, its own input size) as
model.tflite and model_int8.tflite would hold it (calibrated on random pictures: the speed does not depend on
them), the two alternated in one process.
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402  (benchmarks/machine.py)

INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512vnni", "avx_vnni", "amx_int8")


def cpu_description() -> str:
    return machine.cpu_description(INT8_FLAGS, "int8-relevant flags")


def stack(kind: str):
    import tensorflow as tf

    inputs = tf.keras.Input((80, 80, 64), batch_size=1)
    x = inputs
    for _ in range(4):
        if kind == "1x1":
            x = tf.keras.layers.Conv2D(256 if x.shape[-1] == 64 else 64, 1, activation="relu")(x)
        else:
            x = tf.keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    return tf.keras.Model(inputs, x)


def flatbuffers(model, rng):
    import numpy as np
    import tensorflow as tf

    float32 = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([rng.random((1, 80, 80, 64), dtype=np.float32)] for _ in range(4))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    return float32, converter.convert()


def median_ms(flatbuffer: bytes, runs: int, rng) -> float:
    import numpy as np

    from effdet.eval.engines import tflite_interpreter

    interpreter = tflite_interpreter(model_content=flatbuffer, num_threads=len(os.sched_getaffinity(0)))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    data = rng.integers(-128, 128, detail["shape"]) if detail["dtype"] != np.float32 else rng.random(detail["shape"])
    interpreter.set_tensor(detail["index"], data.astype(detail["dtype"]))
    for _ in range(3):
        interpreter.invoke()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default="efficientdet-lite0,efficientdet-d0", help="comma-separated; '' for none")
    args = parser.parse_args()
    import numpy as np

    rng = np.random.default_rng(0)
    print(cpu_description())
    for kind in ("1x1", "depthwise"):
        float32, int8 = flatbuffers(stack(kind), rng)
        for round_ in range(1, args.rounds + 1):  # alternated, so that a slow spell of the machine hits both
            a, b = median_ms(float32, args.runs, rng), median_ms(int8, args.runs, rng)
            print(f"{kind:>9} round {round_}: float32 {a:.2f} ms, int8 {b:.2f} ms, int8/float32 {b / a:.2f}")
    for name in filter(None, args.models.split(",")):
        float32, int8 = network_flatbuffers(name, rng)
        for round_ in range(1, args.rounds + 1):
            a, b = median_ms(float32, args.runs, rng), median_ms(int8, args.runs, rng)
            print(f"{name} round {round_}: float32 {a:.1f} ms, int8 {b:.1f} ms, int8/float32 {b / a:.2f}")


def network_flatbuffers(name: str, rng):
    from hydra import compose, initialize_config_dir

    from effdet.config import register_schema
    from effdet.eval.convert import Calibration, tflite_model
    from effdet.model.builder import build_model, image_size_of

    register_schema()
    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={name}", "data=coco"])
    model = build_model(cfg.model, cfg.data.num_classes)
    size = image_size_of(cfg.model)
    calibration = Calibration(lambda shape: (rng.integers(0, 256, (1, *shape, 3), dtype="uint8") for _ in range(8)))
    return (tflite_model(model, cfg.data.num_classes, size),
            tflite_model(model, cfg.data.num_classes, size, "int8", calibration))


if __name__ == "__main__":
    main()
