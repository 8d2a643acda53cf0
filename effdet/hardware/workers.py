"""This process's place among the workers. Horovod when it runs several processes; otherwise one process
and no collective at all, so the project runs where Horovod is not installed."""
from typing import Any, List, Optional

import tensorflow as tf

from effdet.hardware.ranks import launched_as_elastic, launched_as_worker

_horovod_workers = None  # once Horovod is initialised, every init_workers() call returns the same Workers


class Workers:
    """`elastic`: the number of workers may change while they run (Horovod Elastic); Horovod then stays in use
    even when one worker is left, and `refresh()` reads the new places after each change."""

    def __init__(self, hvd=None, elastic: bool = False):
        self.elastic = elastic
        self.hvd = hvd if hvd is not None and (elastic or hvd.size() > 1) else None
        self.refresh()

    def refresh(self) -> None:
        """This worker's place, read again from Horovod (after an elastic job's workers changed)."""
        self.rank = self.hvd.rank() if self.hvd else 0
        self.size = self.hvd.size() if self.hvd else 1
        self.local_rank = self.hvd.local_rank() if self.hvd else 0
        self.local_size = self.hvd.local_size() if self.hvd else 1

    @property
    def is_chief(self) -> bool:
        """Rank 0: the only worker that writes checkpoints, logs and summaries."""
        return self.rank == 0

    def size_tensor(self) -> tf.Tensor:
        """The number of workers as a float32 tensor, read when a traced step runs: an elastic job's steps are
        traced once and run on any number of workers."""
        if self.elastic and self.hvd:
            return tf.cast(self.hvd.size_op(), tf.float32)
        return tf.constant(float(self.size))

    def sum(self, value: tf.Tensor) -> tf.Tensor:
        if not self.hvd:
            return value
        return self.hvd.allreduce(value, op=self.hvd.Sum)

    def max(self, value: tf.Tensor) -> tf.Tensor:
        if not self.hvd:
            return value
        return self.hvd.allreduce(value, op=self.hvd.Max)

    def average_gradients(self, gradients: List[tf.Tensor]) -> List[tf.Tensor]:
        if not self.hvd:
            return gradients
        return self.hvd.grouped_allreduce(gradients, op=self.hvd.Average)

    def broadcast(self, variables: List[tf.Variable], root_rank: int = 0) -> None:
        """Makes every worker start from rank 0's values (weights, optimizer slots, EMA, step)."""
        if self.hvd and variables:
            self.hvd.broadcast_variables(variables, root_rank=root_rank)

    def gather(self, value: Any) -> List[Any]:
        """Every worker's `value` (any picklable object), in rank order, on every worker."""
        if not self.hvd:
            return [value]
        return self.hvd.allgather_object(value)

    def share(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object), on every worker."""
        if not self.hvd:
            return value
        return self.hvd.broadcast_object(value, root_rank=0)

    def barrier(self) -> None:
        if self.hvd:
            self.hvd.allreduce(tf.constant(0), op=self.hvd.Sum)


def init_workers(use_horovod: Optional[bool] = None) -> Workers:
    """Initialises Horovod when it is asked for, or when an outside launcher started several workers."""
    if use_horovod is None:
        use_horovod = launched_as_worker()
    if not use_horovod:
        return Workers()
    try:
        import horovod.tensorflow as hvd
    except ImportError as error:
        raise ImportError("this process was started as one of several workers, but Horovod is not importable "
                          f"({error}); install it with `make venv` (see README)") from error
    global _horovod_workers
    if _horovod_workers is None:
        hvd.init()
        _horovod_workers = Workers(hvd, elastic=launched_as_elastic())
    return _horovod_workers
