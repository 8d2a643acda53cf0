"""mode=inspect: what a variant is — sizes, parameters, FLOPs, levels, anchors (automl's model_inspect)."""
import json
import os
from typing import Any, Dict

from effdet.artifacts import INSPECT
from effdet.model.anchors import num_anchors_per_level
from effdet.model.builder import build_model, image_size_of
from effdet.model.checkpoint import load_weights
from effdet.model.efficientdet import feature_sizes
from effdet.model.flops import count_flops, count_params
from effdet.modes.registry import MODES


@MODES.register("inspect")
def inspect(cfg: Any, run_dir: str) -> Dict[str, Any]:
    model_cfg = cfg.model
    model = build_model(model_cfg, num_classes=cfg.data.num_classes)
    checkpoints = []
    if cfg.trainer.backbone_ckpt:
        checkpoints.append(load_weights(model, cfg.trainer.backbone_ckpt, backbone_only=True).summary())
    if cfg.trainer.ckpt:
        checkpoints.append(load_weights(model, cfg.trainer.ckpt).summary())
    image_size = image_size_of(model_cfg)
    anchors_per_location = model_cfg.num_scales * len(model_cfg.aspect_ratios)
    sizes = feature_sizes(image_size, model_cfg.max_level)
    anchors = num_anchors_per_level(image_size, model_cfg.min_level, model_cfg.max_level, anchors_per_location)
    levels = [{"level": level, "stride": 2 ** level, "height": sizes[level][0], "width": sizes[level][1],
               "channels": model_cfg.fpn_num_filters, "anchors": anchors[level]}
              for level in range(model_cfg.min_level, model_cfg.max_level + 1)]
    parts = {layer.name: count_params(layer.trainable_variables) for layer in model.layers}
    summary = {
        "model": model_cfg.name,
        "backbone": model_cfg.backbone,
        "image_size": list(image_size),
        "num_classes": cfg.data.num_classes,
        "trainable_params": count_params(model.trainable_variables),
        "all_variables": count_params(model.variables),
        "params_by_part": parts,
        "flops_madds": count_flops(model, image_size),
        "levels": levels,
        "num_anchors": sum(anchors.values()),
        "anchors_per_location": anchors_per_location,
        "checkpoints": checkpoints,
    }
    print(format_summary(summary))
    with open(os.path.join(run_dir, INSPECT), "w") as handle:
        json.dump(summary, handle, indent=2)
    return summary


def format_summary(s: Dict[str, Any]) -> str:
    height, width = s["image_size"]
    lines = [
        f"model               {s['model']} (backbone {s['backbone']})",
        f"input size          {height}x{width}",
        f"classes             {s['num_classes']}",
        f"trainable params    {s['trainable_params']}",
        f"all variables       {s['all_variables']}  (trainable + batch-norm moving statistics)",
        f"FLOPs               {s['flops_madds'] / 1e9:.3f} B multiply-adds",
        "params by part      " + ", ".join(f"{name} {count}" for name, count in s["params_by_part"].items() if count),
        f"anchors             {s['num_anchors']} ({s['anchors_per_location']} per location)",
        "",
        "level  stride  feature map       anchors",
    ]
    for level in s["levels"]:
        feature_map = f"{level['height']}x{level['width']}x{level['channels']}"
        lines.append(f"P{level['level']:<5} {level['stride']:<7} {feature_map:<17} {level['anchors']}")
    lines.extend(s["checkpoints"])
    return "\n".join(lines)
