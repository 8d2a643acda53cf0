"""Two Horovod processes on localhost (Gloo) compute what one process computes on the whole batch."""
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from tests.train import horovod_worker as worker

HOROVODRUN = os.path.join(os.path.dirname(sys.executable), "horovodrun")


def test_two_workers_match_one_process_on_the_global_batch(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([HOROVODRUN, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable,
                             worker.__file__, str(tmp_path)], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    assert int(ranks[0]["size"]) == 2

    # both ranks hold identical weights after the step
    np.testing.assert_array_equal(ranks[0]["weights"], ranks[1]["weights"])

    # the averaged gradient equals one process's gradient of the concatenated batch (plain BN over the
    # whole batch is what synchronized BN computes over the halves)
    from effdet.model import NormFactory
    from effdet.train.losses import DetectionLoss

    images, targets = worker.global_batch()
    model = worker.tiny(NormFactory("batch_norm"))
    _, expected = worker.gradients(model, images, targets, DetectionLoss(3, 3, 5, jit_compile=False))
    gradients = [ranks[0][f"arr_{i}"] for i in range(len(expected))]
    for got, want, variable in zip(gradients, expected, model.trainable_variables):
        np.testing.assert_allclose(got, want.numpy(), rtol=2e-3, atol=2e-5, err_msg=variable.name)

    # recomputation (trainer.recompute=all) gives the same step: gradients and synchronized BN statistics
    for rank in ranks:
        scale = np.abs(rank["plain"]).max()
        np.testing.assert_allclose(rank["recomputed"], rank["plain"], rtol=0, atol=2e-4 * scale)
        assert not np.allclose(rank["moving"], rank["initial_moving"])
        np.testing.assert_allclose(rank["recomputed_moving"], rank["moving"], rtol=1e-5, atol=1e-6)

    # synchronized BN moments are the global batch's
    probe = tf.reshape(tf.range(worker.GLOBAL_BATCH * 6, dtype=tf.float32), [worker.GLOBAL_BATCH, 6]) ** 2
    mean, variance = tf.nn.moments(probe, axes=[0])
    for rank in ranks:
        np.testing.assert_allclose(rank["bn_mean"], mean.numpy(), rtol=1e-5)
        np.testing.assert_allclose(rank["bn_variance"], variance.numpy(), rtol=1e-4)
