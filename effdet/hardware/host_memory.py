"""glibc malloc settings for a TensorFlow process that churns through megabyte-sized buffers.

By default glibc serves every allocation above a (dynamic) threshold with a fresh mmap and returns it to the
system on free, so each decoded image, resized image and anchor-target map of the input pipeline page-faults
its way in again; keeping large buffers in malloc's heap makes the training input pipeline faster
(docs/benchmarks.md). Nothing here changes results, only where memory comes from.
"""
import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for this setting on 64-bit systems
TRIM_THRESHOLD = 1 << 30

_applied = False


def keep_large_buffers_in_heap() -> bool:
    """Serves allocations up to 32 MiB from the heap and keeps up to 1 GiB of freed heap for reuse. A no-op
    (returns False) without glibc, with another allocator preloaded, or when MALLOC_* variables already say
    what the user wants."""
    global _applied
    if _applied:
        return True
    if any(name.startswith("MALLOC_") and name.endswith("_") for name in os.environ) or \
            "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False  # the user tuned malloc through the environment: theirs wins
    if any(allocator in os.environ.get("LD_PRELOAD", "") for allocator in ("tcmalloc", "jemalloc", "mimalloc")):
        return False
    path = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(path).mallopt
    except (OSError, AttributeError, TypeError):
        return False  # not glibc (musl, macOS): nothing to tune
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not _applied:
        log.debug("mallopt refused the settings; keeping glibc's defaults")
    return _applied
