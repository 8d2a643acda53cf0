"""mode=export: a TF SavedModel that takes uint8 images and returns detections, pre- and post-processing
inside; optionally the network alone as TFLite (float32, float16, int8) and ONNX files for other runtimes, and
a report of the size, AP and latency of every form written (export.compare)."""
import json
import logging
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import numpy as np
import tensorflow as tf
from omegaconf import OmegaConf

from effdet.artifacts import ANCHORS, EXPORT_REPORT, EXPORT_REPORT_JSON, LABELS, ONNX_MODEL, SAVED_MODEL, \
    TFLITE_FILES
from effdet.data.builder import build_labeler
from effdet.data.pipeline import prepare_images
from effdet.data.sources import build_source
from effdet.errors import ConfigError
from effdet.eval.convert import calibration_of, float_ops_of, import_optional, onnx_model, tflite_model, tflite_ops
from effdet.eval.engines import ENGINES, OnnxNetwork, TFLiteNetwork, engine_threads
from effdet.eval.evaluate import evaluate
from effdet.eval.postprocess import postprocess
from effdet.model.builder import image_size_of
from effdet.model.detector import build_detector
from effdet.modes.registry import MODES

log = logging.getLogger(__name__)


class Detector(tf.Module):
    """images [B, H, W, 3] uint8 (one size per batch, any size) → boxes [B, D, 4] (ymin, xmin, ymax, xmax in the
    images' pixels), scores [B, D], classes [B, D] (dataset ids) and num_detections [B]."""

    def __init__(self, model: tf.keras.Model, anchors, num_classes: int, image_size: Tuple[int, int], eval_cfg: Any):
        super().__init__(name="effdet_detector")
        self.model = model
        self.anchors = tf.constant(anchors)
        self.num_classes = num_classes
        self.image_size = tuple(image_size)
        self.settings = dict(max_detections=eval_cfg.max_detections, score_threshold=eval_cfg.score_threshold,
                             nms=eval_cfg.nms, iou_threshold=eval_cfg.iou_threshold,
                             soft_nms_sigma=eval_cfg.soft_nms_sigma)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def prepare(self, images):
        """images → (pixels at the model's input size, image scales [B], original sizes [B, 2]): the same
        arithmetic as evaluation's input pipeline (fit, bilinear resize, round, pad bottom-right). Always
        padded to the square input: the graph's network and anchors are traced for that one size."""
        pixels, image_scales, original_sizes = prepare_images(images, self.image_size)
        return tf.ensure_shape(pixels, [None, *self.image_size, 3]), image_scales, original_sizes

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve(self, images):
        pixels, image_scales, original_sizes = self.prepare(images)
        class_outputs, box_outputs = self.model(pixels, training=False)
        return postprocess(class_outputs, box_outputs, self.anchors, image_scales, self.num_classes,
                           original_sizes=original_sizes, **self.settings)


@dataclass
class Form:
    """One exported form of the network, and how `eval.engine` runs it."""

    name: str  # what the report calls it
    path: str
    engine: str
    eval_overrides: Dict[str, Any]
    megabytes: float


@MODES.register("export")
def export(cfg: Any, run_dir: str) -> Dict[str, Any]:
    export_cfg = cfg.export
    if not export_cfg.ckpt:
        raise ConfigError("mode=export needs export.ckpt: a checkpoint, a directory of checkpoints or a run dir")
    quantizations = quantizations_of(export_cfg)
    if export_cfg.onnx:
        import_optional("tf2onnx", "export.onnx=true")
    model, prefix, step = build_detector(cfg, export_cfg.ckpt, export_cfg.use_ema, key="export.ckpt")
    image_size = image_size_of(cfg.model)
    if cfg.eval.padding != "square":
        log.warning("eval.padding=%s is for mode=eval and mode=infer: the exported models take the square input "
                    "(%s), whose network and anchors are fixed in them", cfg.eval.padding,
                    "x".join(map(str, image_size)))
    source = build_source(cfg.data)
    if export_cfg.compare and not (source.val_file_pattern and source.val_json_file):
        raise ConfigError(f"export.compare=true evaluates on the val split, and data '{source.name}' has none with "
                          "COCO ground truth (val_file_pattern and val_json_file)")
    labeler = build_labeler(cfg.model)
    detector = Detector(model, labeler.anchors, source.num_classes, image_size, cfg.eval)
    output_dir = export_cfg.output_dir or os.path.join(run_dir, SAVED_MODEL)
    tf.saved_model.save(detector, output_dir, signatures={"serving_default": detector.serve})
    with open(os.path.join(output_dir, LABELS), "w") as handle:  # class id → name, for the model's users
        json.dump({str(i): source.class_name(i) for i in range(1, source.num_classes + 1)}, handle, indent=1)
    log.info("SavedModel of %s (step %d, %s weights) in %s", prefix, step, "EMA" if export_cfg.use_ema else "raw",
             output_dir)
    print(f"SavedModel: {output_dir} (signature serving_default: images uint8 [B, H, W, 3] → boxes, scores, "
          "classes, num_detections)")
    forms = [Form("SavedModel (TensorFlow)", output_dir, "tensorflow", {}, _megabytes(output_dir))]
    export_dir = os.path.dirname(output_dir.rstrip("/"))
    forms += write_network_files(cfg, model, source, labeler, export_dir, quantizations)
    result: Dict[str, Any] = {"saved_model": output_dir, "step": step,
                              "files": {form.name: form.path for form in forms}}
    if export_cfg.compare:
        rows = compare_forms(cfg, model, source, labeler, forms, export_cfg.latency_runs)
        result["report"] = write_report(rows, export_dir, cfg, prefix, step)
    return result


def write_network_files(cfg: Any, model: tf.keras.Model, source, labeler, export_dir: str,
                        quantizations: List[str]) -> List[Form]:
    """The network alone, as the TFLite forms export.quantize names and as ONNX, beside the anchors they share;
    each file checked by its runtime."""
    export_cfg = cfg.export
    if not (export_cfg.tflite or export_cfg.onnx):
        return []
    image_size = image_size_of(cfg.model)
    anchors_path = os.path.join(export_dir, ANCHORS)
    np.save(anchors_path, np.asarray(labeler.anchors, np.float32))
    print(f"anchors of the network files (ymin, xmin, ymax, xmax in input pixels, in the outputs' order): "
          f"{anchors_path}")
    forms = []
    calibration = calibration_of(cfg, source, labeler) if export_cfg.tflite and "int8" in quantizations else None
    for quantize in quantizations if export_cfg.tflite else []:
        path = os.path.join(export_dir, TFLITE_FILES[quantize])
        started = time.perf_counter()
        flatbuffer = tflite_model(model, source.num_classes, image_size, quantize, calibration)
        with open(path, "wb") as handle:
            handle.write(flatbuffer)
        log.info("converted %s in %.1f s", path, time.perf_counter() - started)
        forms.append(Form(f"TFLite {'float32' if quantize == 'none' else quantize}", path, "tflite",
                          {"tflite_quantize": path}, _megabytes(path)))
        print(check_tflite(flatbuffer, path, quantize, image_size))
    if export_cfg.onnx:
        path = os.path.join(export_dir, ONNX_MODEL)
        serialized = onnx_model(model, source.num_classes, image_size)
        with open(path, "wb") as handle:
            handle.write(serialized)
        forms.append(Form("ONNX (ONNX Runtime)", path, "onnxruntime", {"onnx_file": path}, _megabytes(path)))
        print(check_onnx(serialized, path, image_size))
    return forms


def quantizations_of(export_cfg: Any) -> List[str]:
    """export.quantize as a list of forms, each once, in the order given."""
    value = export_cfg.quantize
    values = list(value) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else [value]
    if any(value != "none" for value in values) and not export_cfg.tflite:
        raise ConfigError(f"export.quantize={export_cfg.quantize} names TFLite forms: add export.tflite=true")
    return list(dict.fromkeys(values))


def _megabytes(path: str) -> float:
    if os.path.isdir(path):
        size = sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)
    else:
        size = os.path.getsize(path)
    return size / 1e6


def check_tflite(flatbuffer: bytes, path: str, quantize: str, image_size: Tuple[int, int]) -> str:
    """One line: the file's size, what its ops compute in, and that LiteRT loads and runs it."""
    line = f"TFLite {quantize if quantize != 'none' else 'float32'}: {path} ({len(flatbuffer) / 1e6:.1f} MB"
    if quantize == "int8":
        float_ops = float_ops_of(tflite_ops(flatbuffer))
        line += ", integer ops only" if not float_ops else f", float32 ops kept: {', '.join(float_ops)}"
    return line + f"); {_runs(TFLiteNetwork(flatbuffer, engine_threads()), 'LiteRT', image_size)}"


def check_onnx(serialized: bytes, path: str, image_size: Tuple[int, int]) -> str:
    line = f"ONNX: {path} ({len(serialized) / 1e6:.1f} MB)"
    try:
        network = OnnxNetwork(serialized, engine_threads())
    except ConfigError as error:  # onnxruntime missing: the file is written, not checked
        return f"{line}; not run: {error}"
    return f"{line}; {_runs(network, 'ONNX Runtime', image_size)}"


def _runs(network, runtime: str, image_size: Tuple[int, int]) -> str:
    started = time.perf_counter()
    logits, codes = network(np.zeros((1, *image_size, 3), np.uint8))
    seconds = time.perf_counter() - started
    if not (np.isfinite(logits.numpy()).all() and np.isfinite(codes.numpy()).all()):
        raise RuntimeError(f"{runtime} ran the exported network and it gave non-finite outputs")
    return (f"{runtime} runs it: logits {'x'.join(map(str, logits.shape))}, box codes "
            f"{'x'.join(map(str, codes.shape))} ({seconds * 1000:.0f} ms)")


def compare_forms(cfg: Any, model: tf.keras.Model, source, labeler, forms: List[Form], runs: int
                  ) -> List[Dict[str, Any]]:
    """Each form's COCO AP on the val split (its first eval.samples images), through the same input pipeline
    and post-processing, and its network's median latency at batch 1 (pre- and post-processing, the same for
    every form, left out)."""
    image_size = image_size_of(cfg.model)
    rows = []
    for form in forms:
        eval_cfg = OmegaConf.merge(cfg.eval, {"engine": form.engine, "padding": "square", **form.eval_overrides})
        log.info("export.compare: evaluating %s", form.name)
        result = evaluate(model, source, labeler, cfg.data, eval_cfg)
        network = ENGINES.get(form.engine)(model, source.num_classes, image_size, eval_cfg, None)
        rows.append({"form": form.name, "file": os.path.basename(form.path.rstrip("/")), "path": form.path,
                     "megabytes": round(form.megabytes, 2), "AP": round(float(result["metrics"]["AP"]), 4),
                     "AP50": round(float(result["metrics"]["AP50"]), 4), "images": result["num_images"],
                     "latency_ms": round(network_latency(network, image_size, runs) * 1000, 2)})
    return rows


def network_latency(network, image_size: Tuple[int, int], runs: int) -> float:
    """Median seconds of `runs` calls on one image, after two warm-up calls."""
    image = np.random.default_rng(0).integers(0, 256, (1, *image_size, 3), dtype=np.uint8)
    images = tf.constant(image)
    for _ in range(2):
        network(images)[0].numpy()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        network(images)[0].numpy()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def write_report(rows: List[Dict[str, Any]], directory: str, cfg: Any, prefix: str, step: int) -> Dict[str, str]:
    """export_report.md (a table to read before choosing what to ship) and export_report.json."""
    reference = rows[0]
    lines = [f"# Exported forms of {cfg.model.name}", "",
             f"Checkpoint {prefix} (step {step}); COCO AP on {rows[0]['images']} val images of data "
             f"'{cfg.data.name}'; network latency at batch 1, median of {cfg.export.latency_runs} runs, "
             f"{engine_threads()} threads, pre- and post-processing left out (the SavedModel's row: its network, "
             "the same weights, run by TensorFlow).", "",
             "| form | file | size (MB) | AP | AP50 | ΔAP | latency (ms) |", "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['form']} | {row['file']} | {row['megabytes']:.2f} | {row['AP']:.4f} | {row['AP50']:.4f} "
                     f"| {row['AP'] - reference['AP']:+.4f} | {row['latency_ms']:.1f} |")
    text = "\n".join(lines) + "\n"
    paths = {"markdown": os.path.join(directory, EXPORT_REPORT), "json": os.path.join(directory, EXPORT_REPORT_JSON)}
    with open(paths["markdown"], "w") as handle:
        handle.write(text)
    with open(paths["json"], "w") as handle:
        json.dump({"checkpoint": prefix, "step": step, "threads": engine_threads(),
                   "latency_runs": cfg.export.latency_runs, "forms": rows}, handle, indent=1)
    print(text, end="")
    print(f"export report: {paths['markdown']} (and {os.path.basename(paths['json'])})")
    return paths
