"""Horovod's own tuning, as the hardware backend chooses it: the variables Horovod reads when it starts.

Horovod's background thread wakes every HOROVOD_CYCLE_TIME ms (1 ms by default) to coordinate the workers'
collectives. A GPU or Gaudi worker computes on its card, so those wake-ups take nothing from it; a CPU worker
computes on the cores the thread wakes on, and pays for each. conf/hardware/cpu.yaml therefore asks for 20 ms
(benchmarks/scaling.py; README, "Several workers"). A variable already set where the job starts is the user's
choice and always wins.

An elastic job (hardware.elastic) turns Horovod's response cache off: with it, a worker added to a running group
(whose cache is empty while the others' are not) paired collectives of different sizes, and Gloo aborted the
process (docs/distributed.md, "Elastic training").
"""
import os
from typing import Any, Dict, Mapping

CYCLE_TIME = "HOROVOD_CYCLE_TIME"
CACHE_CAPACITY = "HOROVOD_CACHE_CAPACITY"


def horovod_variables(hardware_cfg: Any, env: Mapping[str, str]) -> Dict[str, str]:
    """The HOROVOD_* variables this backend sets for its workers, leaving out those `env` sets already."""
    chosen = {}
    cycle_ms = hardware_cfg.horovod_cycle_time_ms
    if cycle_ms is not None and CYCLE_TIME not in env:
        chosen[CYCLE_TIME] = f"{cycle_ms:g}"
    if hardware_cfg.elastic and CACHE_CAPACITY not in env:
        chosen[CACHE_CAPACITY] = "0"
    return chosen


def apply_horovod_variables(hardware_cfg: Any) -> Dict[str, str]:
    """Sets them in this worker's environment, where `hvd.init()` reads them; so they hold for workers that an
    outside launcher (mpirun, an MPIJob) started, too. Returns what it set."""
    chosen = horovod_variables(hardware_cfg, os.environ)
    os.environ.update(chosen)
    return chosen


def describe_cycle() -> str:
    value = os.environ.get(CYCLE_TIME)
    return f"{CYCLE_TIME}={value} ms" if value else f"{CYCLE_TIME} not set (Horovod's default, 1 ms)"
