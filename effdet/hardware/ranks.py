"""Where this process stands in a launch, read from the environment the launcher set (no TensorFlow, no Horovod:
run.py needs it before either loads)."""
import os
from typing import Optional

# horovodrun (Gloo), Open MPI (mpirun, Kubernetes MPIJob), MPICH / Intel MPI, PMIx
_RANK_VARIABLES = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
_LOCAL_RANK_VARIABLES = ("HOROVOD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PALS_LOCAL_RANKID")
_SIZE_VARIABLES = ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def launched_as_worker() -> bool:
    """True when an outside launcher (horovodrun, mpirun, an MPIJob) started this process as one rank."""
    return _first_int(_RANK_VARIABLES) is not None


def launched_as_elastic() -> bool:
    """True when horovodrun started this process as a worker of an elastic job (hardware.elastic)."""
    return launched_as_worker() and os.environ.get("HOROVOD_ELASTIC", "") == "1"


def rank_from_env() -> int:
    return _first_int(_RANK_VARIABLES) or 0


def local_rank_from_env() -> int:
    return _first_int(_LOCAL_RANK_VARIABLES) or 0


def size_from_env() -> int:
    return _first_int(_SIZE_VARIABLES) or 1


def _first_int(names) -> Optional[int]:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None
