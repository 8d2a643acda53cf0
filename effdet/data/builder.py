"""Config → input: the only place where the data config's pipeline keys are read."""
from typing import Any, Union

from effdet.data.autoaugment import check_policy
from effdet.data.fake import FakeInput
from effdet.data.pipeline import Augmentation, InputPipeline
from effdet.data.reader import CorruptRecords
from effdet.data.sources import DataSource
from effdet.data.targets import AnchorLabeler
from effdet.errors import ConfigError


def build_labeler(model_cfg: Any) -> AnchorLabeler:
    from effdet.model.builder import image_size_of

    return AnchorLabeler(image_size_of(model_cfg), model_cfg.min_level, model_cfg.max_level, model_cfg.num_scales,
                         list(model_cfg.aspect_ratios), model_cfg.anchor_scale)


def build_corrupt_records(data_cfg: Any, split: str) -> CorruptRecords:
    """The tally of the bad records a reader of `split` meets, with data.on_corrupt's policy."""
    return CorruptRecords(split, data_cfg.on_corrupt, data_cfg.max_corrupt_fraction)


def build_input(data_cfg: Any, source: DataSource, labeler: AnchorLabeler, split: str = "train"
                ) -> Union[InputPipeline, FakeInput]:
    """The pipeline over `split` ("train" or "val") of `source`; its readers skip and count bad records
    (`pipeline.corrupt`)."""
    if source.fake:
        return FakeInput(labeler, source.num_classes, seed=data_cfg.seed)
    pattern = source.train_file_pattern if split == "train" else source.val_file_pattern
    if not pattern:
        raise ConfigError(f"data '{source.name}' has no {split} files: set data.{split}_file_pattern")
    if data_cfg.jitter_min > data_cfg.jitter_max:
        raise ConfigError(f"data.jitter_min={data_cfg.jitter_min} is larger than data.jitter_max={data_cfg.jitter_max}")
    if data_cfg.autoaugment_policy:
        check_policy(data_cfg.autoaugment_policy, where="data.autoaugment_policy")
    augmentation = Augmentation(data_cfg.jitter_min, data_cfg.jitter_max, data_cfg.hflip, data_cfg.grid_mask,
                                data_cfg.autoaugment_policy, data_cfg.reduced_decode)
    return InputPipeline(pattern, labeler, augmentation, max_instances=data_cfg.max_instances_per_image,
                         deterministic=data_cfg.deterministic, seed=data_cfg.seed,
                         shuffle_buffer=data_cfg.shuffle_buffer, file_pattern_key=f"data.{split}_file_pattern",
                         corrupt=build_corrupt_records(data_cfg, split))
