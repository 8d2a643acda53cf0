"""Sharded writing: records are built in worker processes and written in input order, round-robin over shards.

Output next to `<prefix>` (a path prefix such as `tfrecord/train`):
  <prefix>-00000-of-00032.tfrecord ...   record i of the written records goes to shard i % num_shards
  label_map.json                          {"<id>": "<name>"} (shared by all prefixes in the directory)
  <basename of prefix>.summary.json       the counts of `summary.build_summary`
Shards are written under a hidden temporary name and renamed when complete. This module imports TensorFlow (through
effdet.data.example); the dataset readers import it only once their inputs have been checked.
"""
import json
import multiprocessing
import os
import sys
from collections import Counter
from typing import Iterator, List, Mapping, Optional, Sequence, Tuple

from effdet.data.example import LABEL_MAP_FILE, SUMMARY_FILE

from . import summary as S
from .errors import ConversionError

MAX_DEFAULT_WORKERS = 8


def default_num_workers() -> int:
    """min(usable CPUs, 8)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_DEFAULT_WORKERS))


def shard_paths(output_prefix: str, num_shards: int) -> List[str]:
    return [f"{output_prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]


def label_map_path(output_prefix: str) -> str:
    return os.path.join(os.path.dirname(output_prefix), LABEL_MAP_FILE)


def summary_path(output_prefix: str) -> str:
    return os.path.join(os.path.dirname(output_prefix), f"{os.path.basename(output_prefix)}.{SUMMARY_FILE}")


def label_map_json(label_map: Mapping[int, str]) -> dict:
    return {str(label): label_map[label] for label in sorted(label_map)}


def check_output(output_prefix: str, num_shards: int, label_map: Mapping[int, str]) -> None:
    """Fails before any work when the output cannot be written as asked."""
    if not os.path.basename(output_prefix):
        raise ConversionError(str(output_prefix), "the output prefix must end in a file name part, e.g. out/train")
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ConversionError("num_shards", f"must be a positive integer, got {num_shards!r}")
    path = label_map_path(output_prefix)
    if os.path.exists(path):
        try:
            with open(path) as handle:
                existing = json.load(handle)
        except (OSError, ValueError) as error:
            raise ConversionError(path, f"exists but cannot be read ({error}); remove it") from None
        if existing != label_map_json(label_map):
            raise ConversionError(path, "exists with other categories (another dataset in this directory?); "
                                        "remove it or write to another directory")


def write_dataset(tasks: Sequence, output_prefix: str, num_shards: int, num_workers: Optional[int],
                  label_map: Mapping[int, str], counts: Counter, progress: bool = True, **summary_args) -> dict:
    """Builds and writes every task's record, then the label map and summary; returns the summary.

    `counts` holds what the caller counted before the images were read (listed items, early drops)."""
    check_output(output_prefix, num_shards, label_map)
    num_workers = default_num_workers() if num_workers is None else max(1, int(num_workers))
    directory = os.path.dirname(output_prefix)
    if directory:
        os.makedirs(directory, exist_ok=True)
    counts = Counter(counts)
    paths = shard_paths(output_prefix, num_shards)
    counts.update(_write_shards(tasks, paths, num_workers, os.path.basename(output_prefix) if progress else None))
    summary = S.build_summary(counts, num_shards=num_shards, label_map=label_map, **summary_args)
    _write_json(label_map_path(output_prefix), label_map_json(label_map))
    _write_json(summary_path(output_prefix), summary)
    return summary


def _write_shards(tasks: Sequence, paths: List[str], num_workers: int, progress: Optional[str]) -> Counter:
    """Writes the records; `progress` is the progress bar's label, None for no bar."""
    import tensorflow as tf
    from tqdm import tqdm

    counts = Counter()
    # Hidden while incomplete, so that a `<prefix>-*` pattern never reads a partial shard.
    temporary = [os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.incomplete") for path in paths]
    writers = [tf.io.TFRecordWriter(path) for path in temporary]
    built = _built(tasks, num_workers)
    try:
        written = 0
        for serialized, image_counts in tqdm(built, total=len(tasks), unit="img", file=sys.stderr,
                                             disable=progress is None, desc=progress, dynamic_ncols=True):
            counts.update(image_counts)
            if serialized is not None:
                writers[written % len(writers)].write(serialized)
                written += 1
        for writer in writers:
            writer.close()
    except BaseException:  # an error or Ctrl-C: leave no partial shards behind
        for writer, path in zip(writers, temporary):
            writer.close()
            if os.path.exists(path):
                os.remove(path)
        raise
    finally:
        built.close()  # stops the worker processes now, not when the generator is collected
    for source, target in zip(temporary, paths):
        os.replace(source, target)
    return counts


def _built(tasks: Sequence, num_workers: int) -> Iterator[Tuple[Optional[bytes], Counter]]:
    """build_record over the tasks, in their order, in `num_workers` processes (in this one when 1)."""
    from .records import build_record

    if num_workers <= 1 or len(tasks) <= 1:
        yield from map(build_record, tasks)
        return
    # fork: the workers inherit the loaded modules instead of importing TensorFlow again (seconds each). They use
    # only Pillow, NumPy and protobuf, never the TensorFlow runtime, whose threads do not survive a fork.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    workers = min(num_workers, len(tasks))
    chunksize = max(1, min(16, len(tasks) // (workers * 8)))
    with context.Pool(workers) as pool:
        yield from pool.imap(build_record, tasks, chunksize)


def _write_json(path: str, value) -> None:
    with open(path, "w") as handle:
        json.dump(value, handle, indent=2)
        handle.write("\n")
