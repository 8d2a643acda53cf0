"""Run by test_horovod.py under `horovodrun -np 2`: one training step of a tiny model on this rank's half of
a fixed global batch, with synchronized batch norm, without and with recomputation; saves what the test
compares."""
import os
import sys

import numpy as np
import tensorflow as tf

from effdet.data.fake import FakeInput
from effdet.data.targets import AnchorLabeler
from effdet.hardware.workers import init_workers
from effdet.model import EfficientDet, NormFactory
from effdet.model.builder import create_variables
from effdet.model.recompute import set_recompute
from effdet.train.losses import DetectionLoss

GLOBAL_BATCH = 4


def tiny(norm):
    tf.keras.utils.set_random_seed(0)
    model = EfficientDet("tiny", "efficientnet-b0", 3, fpn_num_filters=8, fpn_cell_repeats=1, box_class_repeats=1,
                         max_level=5, backbone_drop_connect_rate=0.0, norm=norm)
    create_variables(model)
    return model


def global_batch():
    labeler = AnchorLabeler((64, 64), 3, 5, 3, [1.0, 2.0, 0.5], 4.0)
    return next(iter(FakeInput(labeler, 3, seed=5).train(GLOBAL_BATCH)))


def gradients(model, images, targets, loss_fn):
    with tf.GradientTape() as tape:
        loss = loss_fn(model(images, training=True), targets)["det_loss"]
    return loss, tape.gradient(loss, model.trainable_variables)


def moving_statistics(model):
    return np.concatenate([v.numpy().ravel() for v in model.non_trainable_variables if "moving" in v.name])


def main(out_dir):
    workers = init_workers(use_horovod=True)
    images, targets = global_batch()
    part = slice(workers.rank * GLOBAL_BATCH // workers.size, (workers.rank + 1) * GLOBAL_BATCH // workers.size)
    mine = tf.nest.map_structure(lambda t: t[part], targets)
    model = tiny(NormFactory("sync_batch_norm"))
    workers.broadcast(model.variables)
    loss_fn = DetectionLoss(3, 3, 5, workers=workers, jit_compile=False)
    _, grads = gradients(model, images[part], mine, loss_fn)
    averaged = workers.average_gradients(grads)
    moving = moving_statistics(model)
    # the same step with every block recomputed (synchronized batch norm all-reduces again in the recomputation)
    recomputed = tiny(NormFactory("sync_batch_norm"))
    set_recompute(recomputed, "all")
    workers.broadcast(recomputed.variables)
    initial = moving_statistics(recomputed)
    _, again = gradients(recomputed, images[part], mine, loss_fn)
    again = workers.average_gradients(again)
    optimizer = tf.keras.optimizers.SGD(0.1)
    optimizer.apply_gradients(zip(averaged, model.trainable_variables))
    # synchronized batch norm alone: its moving mean moves towards the mean of the global batch
    bn = NormFactory("sync_batch_norm", momentum=0.0)(name="probe")
    probe = tf.reshape(tf.range(GLOBAL_BATCH * 6, dtype=tf.float32), [GLOBAL_BATCH, 6])[part] ** 2
    bn(probe, training=True)
    np.savez(os.path.join(out_dir, f"rank{workers.rank}.npz"),
             *[g.numpy() for g in averaged],
             recomputed=np.concatenate([g.numpy().ravel() for g in again]),
             plain=np.concatenate([g.numpy().ravel() for g in averaged]),
             moving=moving, initial_moving=initial, recomputed_moving=moving_statistics(recomputed),
             weights=np.concatenate([v.numpy().ravel() for v in model.trainable_variables]),
             bn_mean=bn.moving_mean.numpy(), bn_variance=bn.moving_variance.numpy(), size=workers.size)


if __name__ == "__main__":
    main(sys.argv[1])
