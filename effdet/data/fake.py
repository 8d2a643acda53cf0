"""data=fake: random images with valid targets, at no input cost (the seed's --use_fake_data), for benchmarks."""
import tensorflow as tf

from effdet.config.schema import DataConfig, default_of
from effdet.data.pipeline import Shard
from effdet.data.targets import AnchorLabeler


class FakeInput:
    def __init__(self, labeler: AnchorLabeler, num_classes: int, seed: int = default_of(DataConfig, "seed"),
                 boxes_per_image: int = 5):
        self.labeler = labeler
        self.num_classes = num_classes
        self.seed = seed
        self.boxes_per_image = boxes_per_image
        self.corrupt = None  # it reads no records, so none can be bad

    def _example(self, index):
        height, width = self.labeler.image_size
        generator = tf.random.Generator.from_seed(self.seed + index)
        image = tf.cast(generator.uniform([height, width, 3], 0, 256, dtype=tf.int32), tf.uint8)
        corners = tf.sort(generator.uniform([self.boxes_per_image, 2, 2], 0, 1), axis=1)  # [N, (min, max), (y, x)]
        scale = tf.constant([height, width], tf.float32)
        boxes = tf.concat([corners[:, 0] * scale, corners[:, 1] * scale], axis=1)
        classes = generator.uniform([self.boxes_per_image], 1, self.num_classes + 1, dtype=tf.int32)
        return image, self.labeler.label(boxes, classes, tf.zeros([self.boxes_per_image], tf.bool))

    def train(self, batch_size: int, shard: Shard = Shard(), start_example: int = 0) -> tf.data.Dataset:
        # One fixed batch, repeated: the point is to measure everything but the input.
        examples = [self._example(shard.index * batch_size + i) for i in range(batch_size)]
        batch = tf.nest.map_structure(lambda *parts: tf.stack(parts), *examples)
        return tf.data.Dataset.from_tensors(batch).repeat()

    def train_stream(self, batch_size: int, shard: Shard = Shard(), position: int = 0) -> tf.data.Dataset:
        """`train`'s batch with the positions an elastic job's steps consume (InputPipeline.train_stream)."""
        batch = next(iter(self.train(batch_size, shard)))
        positions = tf.data.Dataset.range(position, 1 << 62).shard(shard.count, shard.index).batch(batch_size)
        return positions.map(lambda keys: (*batch, keys))
