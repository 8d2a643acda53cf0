"""Config → model. The only place where the model's config keys are read."""
from typing import Any

import tensorflow as tf

from effdet.model.efficientdet import EfficientDet
from effdet.model.layers import NormFactory


def image_size_of(model_cfg: Any):
    size = model_cfg.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


def build_model(model_cfg: Any, num_classes: int) -> EfficientDet:
    """Builds the network of `model_cfg` (conf/model/*.yaml) for `num_classes` classes, with its variables."""
    norm = NormFactory(model_cfg.batch_norm.kind, model_cfg.batch_norm.momentum, model_cfg.batch_norm.epsilon)
    model = EfficientDet(
        name=model_cfg.name,
        backbone=model_cfg.backbone,
        num_classes=num_classes,
        min_level=model_cfg.min_level,
        max_level=model_cfg.max_level,
        fpn_num_filters=model_cfg.fpn_num_filters,
        fpn_cell_repeats=model_cfg.fpn_cell_repeats,
        box_class_repeats=model_cfg.box_class_repeats,
        fpn_weight_method=model_cfg.fpn_weight_method,
        num_anchors=model_cfg.num_scales * len(model_cfg.aspect_ratios),
        act_type=model_cfg.act_type,
        norm=norm,
        backbone_drop_connect_rate=model_cfg.backbone_drop_connect_rate,
        head_survival_prob=model_cfg.head_survival_prob,
        mean_rgb=list(model_cfg.mean_rgb),
        stddev_rgb=list(model_cfg.stddev_rgb),
    )
    create_variables(model)
    return model


def create_variables(model: EfficientDet) -> None:
    """Creates every variable with one forward pass on the smallest input that has all levels; the
    variables do not depend on the input size, and a full-size pass of a D7 would take far longer."""
    side = 2 ** model.max_level
    model(tf.zeros([1, side, side, 3]), training=False)
