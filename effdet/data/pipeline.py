"""The tf.data input pipeline: TFRecord shards → (this rank's part) → decode → augment → anchor targets →
batches. Training and evaluation differ only in augmentation and in what they keep for scoring."""
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import tensorflow as tf

from effdet.config.schema import DataConfig, EvalConfig, default_of
from effdet.data import augment, autoaugment
from effdet.data.example import parse, parse_fields
from effdet.data.reader import CorruptRecords, records_dataset
from effdet.data.targets import IGNORE, AnchorLabeler
from effdet.errors import DataError

PADDINGS = ("square", "stride")  # eval.padding
# A place in train_stream's order, as one int64: epoch × POSITIONS_PER_EPOCH + the record's index in the epoch.
POSITIONS_PER_EPOCH = 1 << 32


def split_position(position: int) -> Tuple[int, int]:
    """(epoch, index in the epoch) of a place in train_stream's order."""
    return int(position) // POSITIONS_PER_EPOCH, int(position) % POSITIONS_PER_EPOCH


def padding_multiple(padding: str, labeler: AnchorLabeler) -> Optional[int]:
    """What eval.padding pads images to multiples of: None for the square input, else the coarsest stride."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    return None if padding == "square" else labeler.coarsest_stride


@dataclass(frozen=True)
class Augmentation:
    """The training augmentation; the defaults are the data config's (DataConfig in the schema)."""

    jitter_min: float = default_of(DataConfig, "jitter_min")
    jitter_max: float = default_of(DataConfig, "jitter_max")
    hflip: bool = default_of(DataConfig, "hflip")
    grid_mask: bool = default_of(DataConfig, "grid_mask")
    # "v0": the detection AutoAugment policy (Zoph et al., 2019)
    autoaugment_policy: Optional[str] = default_of(DataConfig, "autoaugment_policy")
    # Decode a JPEG that is shrunk by 2×, 4× or 8× (scale jitter in training, fitting to the input size in
    # evaluation) at that reduced resolution (libjpeg's DCT scaling): a few times cheaper, and better
    # anti-aliased than bilinear resizing from full size.
    reduced_decode: bool = default_of(DataConfig, "reduced_decode")


@dataclass(frozen=True)
class Shard:
    """This worker's part of the data: `index` of `count` disjoint parts whose union is everything."""

    index: int = 0
    count: int = 1


def list_files(file_pattern: str, key: str = "") -> list:
    files = sorted(tf.io.gfile.glob(os.path.expanduser(file_pattern)))
    if not files:
        origin = f" (from {key})" if key else ""
        raise DataError(f"no files match '{file_pattern}'{origin}")
    return files


def pad_to(tensor: tf.Tensor, size: int, value) -> tf.Tensor:
    """Pads (or cuts) the first dimension to `size`, so that examples batch."""
    tensor = tensor[:size]
    padding = [[0, size - tf.shape(tensor)[0]]] + [[0, 0]] * (len(tensor.shape) - 1)
    return tf.pad(tensor, padding, constant_values=value)


class InputPipeline:
    def __init__(self, file_pattern: str, labeler: AnchorLabeler, augmentation: Augmentation = Augmentation(),
                 max_instances: int = default_of(DataConfig, "max_instances_per_image"),
                 deterministic: bool = default_of(DataConfig, "deterministic"),
                 seed: int = default_of(DataConfig, "seed"),
                 shuffle_buffer: int = default_of(DataConfig, "shuffle_buffer"), cycle_length: int = 8,
                 file_pattern_key: str = "",
                 corrupt: Optional[CorruptRecords] = None):
        self.files = list_files(file_pattern, file_pattern_key)
        # Bad records are skipped by the readers and counted here; what to do about them is the run's business.
        self.corrupt = corrupt if corrupt is not None else CorruptRecords()
        self.labeler = labeler
        self.image_size = labeler.image_size
        self.augmentation = augmentation
        self.max_instances = max_instances
        self.deterministic = deterministic
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.cycle_length = cycle_length

    # --- datasets ---------------------------------------------------------------------------------------

    def train(self, batch_size: int, shard: Shard = Shard(), start_example: int = 0) -> tf.data.Dataset:
        """Endless augmented batches (images, targets). `start_example` resumes the stream where a run stopped:
        with data.deterministic the batches that follow are those the interrupted run would have seen."""
        records = self._records(shard, shuffle_files=True)
        records = records.shuffle(self.shuffle_buffer, seed=self.seed, reshuffle_each_iteration=True).repeat()
        examples = records.enumerate().skip(start_example)
        examples = examples.map(self._train_example, num_parallel_calls=tf.data.AUTOTUNE,
                                deterministic=self.deterministic)
        return self._finish(examples.batch(batch_size, drop_remainder=True))

    def train_stream(self, batch_size: int, shard: Shard = Shard(), position: int = 0) -> tf.data.Dataset:
        """Endless augmented batches (images, targets, positions) for an elastic job, whose number of workers
        changes while it trains. Unlike `train`, every worker reads one global order of records, the same
        whatever the number of workers: epoch e's files in an order drawn from (data.seed, e), interleaved, then
        through a shuffle buffer. Worker `shard.index` of `shard.count` takes the examples at `position`,
        `position` + count, ... of that order, so each step trains on the next count × batch_size examples,
        each on one worker. `positions` are the examples' places in it (`stream_position`'s keys); the first
        place after a step's largest one is where a run goes on from, with any number of workers, without
        repeating or skipping an example. The price: every worker reads (without decoding) every record."""
        epoch, index = split_position(position)
        stream = self._epoch_records(tf.constant(epoch, tf.int64)).skip(index)
        later = tf.data.Dataset.range(epoch + 1, 1 << 31).flat_map(self._epoch_records)
        stream = stream.concatenate(later).shard(shard.count, shard.index)
        # in order: a batch must hold exactly the examples at its positions
        examples = stream.map(lambda key, record: (*self._train_example(key, record), key),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return self._finish(examples.batch(batch_size, drop_remainder=True))

    def _epoch_records(self, epoch: tf.Tensor) -> tf.data.Dataset:
        """(position, record) of every good record, in epoch `epoch`'s order."""
        files = tf.random.experimental.stateless_shuffle(tf.constant(self.files),
                                                         seed=tf.stack([tf.constant(self.seed, tf.int64), epoch]))
        records = tf.data.Dataset.from_tensor_slices(files).interleave(
            lambda path: records_dataset(path, self.corrupt), cycle_length=min(self.cycle_length, len(self.files)),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        # One seed for every epoch (a shuffle's seed cannot be a tensor); the epochs differ by their file order.
        records = records.shuffle(self.shuffle_buffer, seed=self.seed, reshuffle_each_iteration=False)
        return records.enumerate().map(lambda index, record: (epoch * POSITIONS_PER_EPOCH + index, record))

    def eval(self, batch_size: int, shard: Shard = Shard(), max_examples: Optional[int] = None,
             padding: str = default_of(EvalConfig, "padding")) -> tf.data.Dataset:
        """One pass: (images, targets + what scoring needs: source ids, image scales, ground truth in original
        pixels). The last batch may be smaller. `max_examples` counts over all shards: the same first images
        are evaluated whatever the number of workers, each record by exactly one.

        padding: "square" pads every image to the model's input size; "stride" only to multiples of the
        coarsest level's stride (eval.padding), and a batch to its largest image. Images then vary in size,
        so there are no anchor targets: evaluation needs only what scoring needs."""
        multiple = padding_multiple(padding, self.labeler)
        records = self._records(Shard(), shuffle_files=False)
        if max_examples is not None:
            records = records.take(max_examples)
        if shard.count > 1:
            records = records.shard(shard.count, shard.index)
        examples = records.map(lambda record: self._eval_example(record, multiple),
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        batches = examples.batch(batch_size) if multiple is None else examples.padded_batch(batch_size)
        return self._finish(batches)

    def first_examples(self, count: int) -> tf.data.Dataset:
        """The first `count` examples of the split in the order `eval` runs them, decoded but not prepared
        (`effdet.data.example.parse`'s dict: the image at its own size, normalised boxes, classes, source id), for
        a picture of them. Bad records are skipped and counted apart from the pipeline's."""
        apart = CorruptRecords(self.corrupt.split, on_corrupt="skip")
        return self._records(Shard(), shuffle_files=False, corrupt=apart).take(count).map(parse)

    def _records(self, shard: Shard, shuffle_files: bool, corrupt: Optional[CorruptRecords] = None
                 ) -> tf.data.Dataset:
        # Whole files per worker when there are enough of them (each reads only its files); else records.
        by_file = len(self.files) >= shard.count
        files = self.files[shard.index::shard.count] if by_file else self.files
        dataset = tf.data.Dataset.from_tensor_slices(files)
        if shuffle_files:
            dataset = dataset.shuffle(len(files), seed=self.seed, reshuffle_each_iteration=True)
        corrupt = self.corrupt if corrupt is None else corrupt
        # Interleaving stays deterministic so that record-level sharding gives disjoint parts.
        dataset = dataset.interleave(lambda path: records_dataset(path, corrupt),
                                     cycle_length=min(self.cycle_length, len(files)),
                                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if not by_file:
            dataset = dataset.shard(shard.count, shard.index)
        return dataset

    def _finish(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        options = tf.data.Options()
        options.deterministic = self.deterministic
        options.experimental_optimization.map_parallelization = True
        options.threading.max_intra_op_parallelism = 1
        return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)

    # --- one example ------------------------------------------------------------------------------------

    @staticmethod
    def _decode(fields, window, image_size, ratio=1):
        """Decodes only the `window` (y, x, height, width in original pixels) of the image. A JPEG is decoded at
        1/`ratio` of its resolution, the window snapped outwards to that grid (any other format: ratio 1).
        Returns the uint8 pixels and the window's offset in original pixels."""
        encoded = fields["encoded"]
        height, width = image_size[0], image_size[1]

        def jpeg(ratio):
            def decode():
                y0, x0 = window[0] // ratio, window[1] // ratio
                y1 = tf.minimum(-((window[0] + window[2]) // -ratio), -(height // -ratio))  # ceil divisions
                x1 = tf.minimum(-((window[1] + window[3]) // -ratio), -(width // -ratio))
                scaled = tf.stack([y0, x0, tf.maximum(y1 - y0, 1), tf.maximum(x1 - x0, 1)])
                pixels = tf.image.decode_and_crop_jpeg(encoded, scaled, channels=3, ratio=ratio,
                                                       dct_method="INTEGER_FAST")
                return pixels, tf.stack([y0, x0]) * ratio
            return decode

        def other():
            image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
            return tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3]), window[:2]

        if isinstance(ratio, int) and ratio == 1:
            return tf.cond(tf.io.is_jpeg(encoded), jpeg(1), other)
        decoders = {index: jpeg(r) for index, r in enumerate(augment.DECODE_RATIOS)}
        ratio_index = tf.argmax(tf.equal(augment.DECODE_RATIOS, ratio), output_type=tf.int32)
        return tf.cond(tf.io.is_jpeg(encoded), lambda: tf.switch_case(ratio_index, decoders), other)

    def _decode_ratio(self, fields, image_scale):
        if not self.augmentation.reduced_decode:
            return 1
        return tf.where(tf.io.is_jpeg(fields["encoded"]), augment.decode_ratio(image_scale), 1)

    @staticmethod
    def _image_shape(fields):
        """(height, width) from the record, or from the encoded header when the record lacks them."""
        encoded = fields["encoded"]
        stored = tf.cast(tf.stack([fields["height"], fields["width"]]), tf.int32)
        from_header = tf.cond(tf.io.is_jpeg(encoded), lambda: tf.image.extract_jpeg_shape(encoded)[:2],
                              lambda: tf.shape(tf.io.decode_image(encoded, channels=3, expand_animations=False))[:2])
        return tf.cond(tf.reduce_all(stored > 0), lambda: stored, lambda: from_header)

    def _train_example(self, index, serialized):
        seed = tf.stack([tf.cast(self.seed, tf.int64), index])
        fields = parse_fields(serialized)
        height, width = tf.unstack(self._image_shape(fields))
        aug = self.augmentation
        window, image_scale = augment.scale_jitter_crop(height, width, self.image_size, seed,
                                                        aug.jitter_min, aug.jitter_max)
        ratio = self._decode_ratio(fields, image_scale)
        image, offset = self._decode(fields, window, (height, width), ratio)
        size = tf.cast(tf.stack([height, width, height, width]), tf.float32)
        image, boxes = augment.resize_window(image, fields["boxes"] * size, offset, image_scale, self.image_size,
                                             ratio)
        if aug.autoaugment_policy:
            image, boxes = autoaugment.autoaugment(tf.cast(image, tf.float32), boxes, seed, aug.autoaugment_policy)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
        if aug.hflip:  # before padding: fewer pixels to move, and the padding stays bottom-right
            image, boxes = augment.horizontal_flip(image, boxes, seed)
        image = augment.pad_image(image, self.image_size)
        if aug.grid_mask:
            image = augment.grid_mask(image, seed)
        boxes, classes, is_crowd = augment.keep_boxes_with_area(boxes, fields["classes"], fields["is_crowd"])
        targets = self.labeler.label(boxes, classes, is_crowd)
        image.set_shape([*self.image_size, 3])
        return image, targets

    def _eval_example(self, serialized, multiple: Optional[int]):
        fields = parse_fields(serialized)
        height, width = tf.unstack(self._image_shape(fields))
        window, image_scale = augment.fit_crop(height, width, self.image_size)
        ratio = self._decode_ratio(fields, image_scale)  # as in training: the model sees the same kind of pixels
        image, offset = self._decode(fields, window, (height, width), ratio)
        size = tf.cast(tf.stack([height, width, height, width]), tf.float32)
        original_boxes = fields["boxes"] * size
        image, boxes = augment.resize_window(image, original_boxes, offset, image_scale, self.image_size, ratio)
        if multiple is None:
            image = augment.pad_image(image, self.image_size)
            kept_boxes, classes, is_crowd = augment.keep_boxes_with_area(boxes, fields["classes"],
                                                                         fields["is_crowd"])
            targets = self.labeler.label(kept_boxes, classes, is_crowd)
            image.set_shape([*self.image_size, 3])
        else:
            image = augment.pad_image(image, augment.stride_padded_size(
                tf.shape(image)[0], tf.shape(image)[1], self.image_size, multiple))
            targets = {}
        n = self.max_instances
        targets.update({
            "source_id": fields["source_id"],
            "image_scale": image_scale,
            "original_size": tf.stack([height, width]),
            "groundtruth_boxes": pad_to(original_boxes, n, -1.0),
            "groundtruth_classes": pad_to(fields["classes"], n, IGNORE),
            "groundtruth_is_crowd": pad_to(fields["is_crowd"], n, False),
            "groundtruth_areas": pad_to(fields["areas"], n, -1.0),
            "num_groundtruth": tf.minimum(tf.shape(fields["classes"])[0], n),
        })
        return image, targets



def inference_example(encoded: tf.Tensor, image_size: Tuple[int, int],
                      reduced_decode: bool = default_of(DataConfig, "reduced_decode"),
                      pad_multiple: Optional[int] = None):
    """An encoded image (JPEG, PNG, BMP or GIF; any size) → the model's uint8 input, as evaluation prepares it
    (resized to fit, padded bottom-right), its scale (input pixels per original pixel) and (height, width).
    With `pad_multiple` (eval.padding=stride) it is padded only up to multiples of it, not to `image_size`."""
    fields = {"encoded": encoded}
    is_jpeg = tf.io.is_jpeg(encoded)
    shape = tf.cond(is_jpeg, lambda: tf.image.extract_jpeg_shape(encoded)[:2],
                    lambda: tf.shape(tf.io.decode_image(encoded, channels=3, expand_animations=False))[:2])
    height, width = tf.unstack(shape)
    window, image_scale = augment.fit_crop(height, width, image_size)
    ratio = tf.where(is_jpeg, augment.decode_ratio(image_scale), 1) if reduced_decode else 1
    image, offset = InputPipeline._decode(fields, window, (height, width), ratio)
    image, _ = augment.resize_window(image, tf.zeros([0, 4]), offset, image_scale, image_size, ratio)
    if pad_multiple is None:
        image = augment.pad_image(image, image_size)
        image.set_shape([*image_size, 3])
    else:
        image = augment.pad_image(image, augment.stride_padded_size(tf.shape(image)[0], tf.shape(image)[1],
                                                                    image_size, pad_multiple))
    return image, image_scale, tf.stack([height, width])


def prepare_images(images: tf.Tensor, image_size: Tuple[int, int], pad_multiple: Optional[int] = None):
    """A batch of same-sized uint8 images [B, H, W, 3] → (pixels, image scales [B], original sizes [B, 2]): the
    arithmetic of `inference_example` (fit, bilinear resize, round, pad bottom-right) on decoded images, for
    the SavedModel and the inference benchmark."""
    batch, height, width = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    _, image_scale = augment.fit_crop(height, width, image_size)
    out_h, out_w = image_size
    resized_h = tf.minimum(tf.cast(tf.round(tf.cast(height, tf.float32) * image_scale), tf.int32), out_h)
    resized_w = tf.minimum(tf.cast(tf.round(tf.cast(width, tf.float32) * image_scale), tf.int32), out_w)
    resized = tf.image.resize(images, [tf.maximum(resized_h, 1), tf.maximum(resized_w, 1)])
    pixels = tf.cast(resized + 0.5, tf.uint8)
    if pad_multiple is not None:
        out_h, out_w = augment.stride_padded_size(resized_h, resized_w, image_size, pad_multiple)
    pixels = tf.pad(pixels, [[0, 0], [0, out_h - tf.shape(pixels)[1]], [0, out_w - tf.shape(pixels)[2]], [0, 0]])
    return pixels, tf.fill([batch], image_scale), tf.tile([[height, width]], [batch, 1])
