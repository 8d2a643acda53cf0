"""Inference speed on the CPU: latency at batch 1 and throughput at batch 8 on 640×480 uint8 images with pre- and
post-processing included, and the latency of the network alone at batch 1, for any engine and quantization.

    .venv/bin/python benchmarks/infer.py [--model efficientdet-d0] [--runs 50] [--override eval.engine=tflite]
        [--override eval.tflite_quantize=int8] [--override eval.padding=stride]

eval.engine=tensorflow (the default) times the exported SavedModel's graph; eval.engine=tflite the same pre- and
post-processing around the network converted to TFLite (eval.tflite_quantize: none, float16 or int8, or a
.tflite file) and run by LiteRT's XNNPACK; eval.engine=onnxruntime around the network converted to ONNX and run
by ONNX Runtime (what mode=eval and mode=infer run with those settings). The int8 network is calibrated on
random pictures here: its speed does not depend on them (its accuracy does: export.compare measures that).
eval.padding=stride pads the resized image only to multiples of 2^max_level (640×480 → 512×384) instead of to
the square input, as mode=eval and mode=infer then do.

Reference on the 2-core machine: Google automl's Keras D0 takes about 117 ms at batch 1 with its
post-processing. Target: at most 0.8× that (94 ms).
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientdet-d0")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--runs", type=int, default=50, help="timed calls at batch 1 (batch 8: a fifth of them)")
    parser.add_argument("--override", action="append", default=[], help="a Hydra override, e.g. eval.nms=soft")
    args = parser.parse_args()

    sys.path.insert(0, REPO)
    from hydra import compose, initialize_config_dir

    from effdet.config import register_schema, validate
    from effdet.tensorflow_env import choose_onednn

    register_schema()
    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={args.model}", "data=coco", *args.override])
    choose_onednn(cfg.hardware.onednn)  # before TensorFlow loads, as run.py does
    validate(cfg)
    from effdet.hardware import setup_hardware

    setup_hardware(cfg.hardware)
    import numpy as np
    import tensorflow as tf

    from effdet.data.builder import build_labeler
    from effdet.data.pipeline import padding_multiple, prepare_images
    from effdet.eval.convert import Calibration
    from effdet.eval.engines import ENGINES
    from effdet.eval.evaluate import detector
    from effdet.model.builder import build_model, image_size_of
    from effdet.modes.export import Detector, network_latency

    model = build_model(cfg.model, cfg.data.num_classes)
    labeler = build_labeler(cfg.model)
    image_size = image_size_of(cfg.model)
    module = Detector(model, labeler.anchors, cfg.data.num_classes, image_size, cfg.eval)
    rng = np.random.default_rng(0)
    calibration = Calibration(lambda size: (rng.integers(0, 256, (1, *size, 3), dtype=np.uint8) for _ in range(8)))
    if cfg.eval.engine == "tensorflow" and cfg.eval.padding == "square":
        serve = module.serve  # the SavedModel's graph
    else:  # what mode=eval and mode=infer run
        detect = detector(model, labeler, cfg.data.num_classes, cfg.eval, calibration)
        multiple = padding_multiple(cfg.eval.padding, labeler)
        prepare = tf.function(lambda images: prepare_images(images, image_size_of(cfg.model), multiple),
                              autograph=False)

        def serve(images):
            return detect(*prepare(images))
    cores = len(os.sched_getaffinity(0))
    quantize = f" ({cfg.eval.tflite_quantize})" if cfg.eval.engine == "tflite" else ""
    print(f"{args.model}, {args.width}x{args.height} uint8 input, pre- and post-processing included "
          f"(nms={cfg.eval.nms}), engine {cfg.eval.engine}{quantize}, padding {cfg.eval.padding}, {cores} cores, "
          f"oneDNN {os.environ.get('TF_ENABLE_ONEDNN_OPTS') == '1'}")
    for batch, runs in ((1, args.runs), (8, max(3, args.runs // 5))):
        images = tf.constant(rng.integers(0, 256, (batch, args.height, args.width, 3), dtype=np.uint8))
        for _ in range(3):  # tracing and warm-up
            serve(images)["num_detections"].numpy()
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            serve(images)["num_detections"].numpy()
            times.append(time.perf_counter() - started)
        median = statistics.median(times)
        print(f"batch {batch}: median {median * 1000:.1f} ms per call (p90 "
              f"{sorted(times)[int(0.9 * (len(times) - 1))] * 1000:.1f} ms), {batch / median:.1f} images/s")
    network = ENGINES.get(cfg.eval.engine, where="eval.engine")(model, cfg.data.num_classes, image_size, cfg.eval,
                                                                calibration)
    print(f"network alone at {image_size[0]}x{image_size[1]}, batch 1: median "
          f"{network_latency(network, image_size, args.runs) * 1000:.1f} ms per call")
    print("reference: automl Keras D0 ~117 ms at batch 1; target <= 94 ms")


if __name__ == "__main__":
    main()
