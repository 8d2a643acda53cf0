"""This process's place among the workers. Horovod when it runs several processes; otherwise one process
and no collective at all, so the project runs where Horovod is not installed."""
from typing import Any, List, Optional

import tensorflow as tf

from effdet.hardware.ranks import launched_as_worker

_horovod_workers = None  # once Horovod is initialised, every init_workers() call returns the same Workers


class Workers:
    def __init__(self, hvd=None):
        self.hvd = hvd if hvd is not None and hvd.size() > 1 else None
        self.rank = hvd.rank() if self.hvd else 0
        self.size = hvd.size() if self.hvd else 1
        self.local_rank = hvd.local_rank() if self.hvd else 0
        self.local_size = hvd.local_size() if self.hvd else 1

    @property
    def is_chief(self) -> bool:
        """Rank 0: the only worker that writes checkpoints, logs and summaries."""
        return self.rank == 0

    def sum(self, value: tf.Tensor) -> tf.Tensor:
        if not self.hvd:
            return value
        return self.hvd.allreduce(value, op=self.hvd.Sum)

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
        _horovod_workers = Workers(hvd)
    return _horovod_workers
