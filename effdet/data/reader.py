"""Reading TFRecord shards so that a damaged record costs that record, not the run.

TensorFlow's TFRecordDataset raises DataLossError at the first record that fails its CRC and gives up the rest
of the shard; a record that passes its CRC but does not parse, or whose image does not decode, fails later, in
the middle of the training step. Here every record is read and checked before the pipeline sees it: a bad one
is skipped, counted in a `CorruptRecords` tally (by shard, with its byte offset) and the reader finds the next
good record after it. What the tally does about it (carry on, or ask the run to stop) is `data.on_corrupt`.

A TFRecord is: length (uint64, little-endian), masked CRC-32C of those 8 bytes, the data, masked CRC-32C of the
data. Both CRCs are checked here, as TensorFlow's reader checks them.
"""
import logging
import math
import struct
import threading
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import google_crc32c
import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError

from effdet.config.schema import DataConfig, default_of
from effdet.data import example as E
from effdet.errors import DataError

log = logging.getLogger(__name__)

HEADER = 12  # length + its CRC
FOOTER = 4  # the data's CRC
_HEADER, _FOOTER = struct.Struct("<QI"), struct.Struct("<I")
ON_CORRUPT = ("skip", "stop")  # data.on_corrupt


def masked_crc32c(data) -> int:
    """The CRC that TFRecord stores: CRC-32C (Castagnoli), rotated and offset."""
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


class CorruptDataError(DataError):
    """Bad records made the run stop (data.on_corrupt, data.max_corrupt_fraction). Every worker raises it
    together; the message names the shard."""

    every_worker = True  # run.py prints it once, on rank 0


# --- the tally ------------------------------------------------------------------------------------------------

@dataclass
class ShardDamage:
    """What went wrong in one shard: the distinct bad records (by byte offset; None: the shard itself) and how
    often a bad record was met (every epoch meets it again)."""

    first_problem: str
    first_offset: Optional[int]
    offsets: set = field(default_factory=set)
    hits: int = 0

    def describe(self, shard: str) -> str:
        where = f" at byte {self.first_offset}" if self.first_offset is not None else ""
        return f"{shard}: {self.first_problem}{where}"


class CorruptRecords:
    """The bad records that the readers of one pipeline met, and whether that is reason to stop.

    `on_corrupt`: "skip" carries on past bad records until more than `max_fraction` of the records read are
    bad; "stop" asks to stop at the first. `expected_records` (one pass over this worker's part) keeps the
    fraction from being judged on the first few records alone: until that many are read it is the divisor.
    Readers in tf.data's threads write to it; the training loop reads it between steps.
    """

    def __init__(self, split: str = "train", on_corrupt: str = default_of(DataConfig, "on_corrupt"),
                 max_fraction: float = default_of(DataConfig, "max_corrupt_fraction"),
                 expected_records: Optional[int] = None):
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
        self.split, self.on_corrupt, self.max_fraction = split, on_corrupt, max_fraction
        self.expected_records = expected_records
        self.records_read = 0
        self.corrupt = 0  # bad records met, counting a record again each time it is met
        self.shards: Dict[str, ShardDamage] = {}
        self._shard_sizes: Dict[str, int] = {}  # records in a shard's last complete pass
        self._resync: Dict[Tuple[str, int], Optional[int]] = {}  # (shard, bad offset) → where reading goes on
        # Offsets of records whose content passed its checks, by shard version (path, size, mtime): a record met
        # again in a later epoch passes its CRCs, so it is the same record and need not be checked again.
        self._verified: Dict[tuple, set] = {}
        self._lock = threading.Lock()

    # written by the readers

    def good(self) -> None:
        with self._lock:
            self.records_read += 1

    def bad(self, shard: str, offset: Optional[int], problem: str, weight: int = 1) -> None:
        with self._lock:
            damage = self.shards.get(shard)
            first = damage is None
            if first:
                damage = self.shards[shard] = ShardDamage(problem, offset)
            damage.offsets.add(offset)
            damage.hits += weight
            self.corrupt += weight
            corrupt, read = self.corrupt, self.records_read
        if first:
            what = "stopping" if self.on_corrupt == "stop" else "skipped"
            log.warning("corrupt %s data: %s; %s (data.on_corrupt=%s; %d bad of %d records so far)", self.split,
                        damage.describe(shard), what, self.on_corrupt, corrupt, read + corrupt)

    def shard_read(self, shard: str, records: int) -> None:
        """A complete pass over `shard` yielded `records` good records."""
        with self._lock:
            self._shard_sizes[shard] = records

    def known_size(self, shard: str) -> int:
        with self._lock:
            return self._shard_sizes.get(shard, 1)

    def resync_point(self, shard: str, offset: int, find) -> Optional[int]:
        """Where a bad record at `offset` ends (found once with `find()`, then remembered for later epochs)."""
        key = (shard, offset)
        with self._lock:
            if key in self._resync:
                return self._resync[key]
        found = find()
        with self._lock:
            self._resync[key] = found
        return found

    def verified(self, version: tuple) -> set:
        with self._lock:
            return self._verified.setdefault(version, set())

    def reset(self) -> None:
        """Forgets the records met so far, before another pass of the same dataset whose counts must be its own
        (an evaluation's). What was learnt about the shards (sizes, verified records, where bad ones end) stays."""
        with self._lock:
            self.records_read, self.corrupt, self.shards = 0, 0, {}

    # read by the run

    def counts(self) -> dict:
        """A plain, picklable summary (summed over workers by `merge_counts`)."""
        with self._lock:
            return {"split": self.split, "records_read": self.records_read, "corrupt": self.corrupt,
                    "shards": {shard: {"problem": d.first_problem, "offset": d.first_offset,
                                       "records": len(d.offsets), "hits": d.hits}
                               for shard, d in sorted(self.shards.items())}}

    def stop_reason(self) -> Optional[str]:
        """Why the run should stop, from this tally alone; None to carry on."""
        return stop_reason(self.counts(), self.on_corrupt, self.max_fraction, self.expected_records)


def merge_counts(parts: List[dict]) -> dict:
    """Several workers' `counts()` as one (each worker reads its own records)."""
    merged = {"split": parts[0]["split"] if parts else "", "records_read": 0, "corrupt": 0, "shards": {}}
    for part in parts:
        merged["records_read"] += part["records_read"]
        merged["corrupt"] += part["corrupt"]
        for shard, damage in part["shards"].items():
            if shard in merged["shards"]:  # record-level sharding: several workers read the same shard
                kept = merged["shards"][shard]
                kept["records"] = max(kept["records"], damage["records"])
                kept["hits"] += damage["hits"]
            else:
                merged["shards"][shard] = dict(damage)
    return merged


def over_threshold(corrupt: int, attempted: int, max_fraction: float, expected_records: Optional[int] = None) -> bool:
    """More than `max_fraction` of the records are bad, judged against at least `expected_records`."""
    return corrupt > max_fraction * max(attempted, expected_records or 0)


def stop_reason(counts: dict, on_corrupt: str, max_fraction: float, expected_records: Optional[int] = None
                ) -> Optional[str]:
    """Why a run that met `counts` should stop (data.on_corrupt, data.max_corrupt_fraction); None otherwise."""
    corrupt = counts["corrupt"]
    if not corrupt:
        return None
    shards = counts["shards"]
    first_shard = next(iter(shards))
    first = shards[first_shard]
    where = f" at byte {first['offset']}" if first["offset"] is not None else ""
    described = f"{first_shard}: {first['problem']}{where}"
    split = counts["split"]
    if on_corrupt == "stop":
        more = f" (and {len(shards) - 1} more shard(s))" if len(shards) > 1 else ""
        return f"corrupt {split} record in {described}{more} (data.on_corrupt=stop)"
    attempted = counts["records_read"] + corrupt
    if over_threshold(corrupt, attempted, max_fraction, expected_records):
        return (f"{corrupt} of {attempted} {split} records read are corrupt ({100 * corrupt / attempted:.1f} %), more "
                f"than data.max_corrupt_fraction={max_fraction}; the first: {described}")
    return None


def distinct_corrupt(counts: dict) -> int:
    """Bad records in `counts`, each counted once however often it was met."""
    return sum(damage["records"] for damage in counts["shards"].values())


def describe_counts(counts: dict) -> str:
    """One line per damaged shard, for logs and summaries."""
    distinct = distinct_corrupt(counts)
    lines = [f"{counts['split']}: {distinct} corrupt record(s) in {len(counts['shards'])} shard(s), met "
             f"{counts['corrupt']} time(s) while reading {counts['records_read']} good records"]
    for shard, damage in counts["shards"].items():
        where = f" at byte {damage['offset']}" if damage["offset"] is not None else ""
        lines.append(f"  {shard}: {damage['records']} bad, first {damage['problem']}{where}")
    return "\n".join(lines)


# --- one record -----------------------------------------------------------------------------------------------

# The kinds that the pipeline's parser (example.PARSE_SPEC) accepts; absent keys take its defaults.
_KINDS = {E.ENCODED: "bytes_list", E.SOURCE_ID: "bytes_list", E.HEIGHT: "int64_list", E.WIDTH: "int64_list",
          E.XMIN: "float_list", E.YMIN: "float_list", E.XMAX: "float_list", E.YMAX: "float_list",
          E.LABEL: "int64_list", E.IS_CROWD: "int64_list", E.AREA: "float_list"}
_SCALARS = (E.ENCODED, E.SOURCE_ID, E.HEIGHT, E.WIDTH)
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def parse_example(serialized: bytes) -> Optional[str]:
    """What is wrong with a record that passed its CRCs, or None: what would fail in the pipeline (the parser's
    feature types, boxes and labels of one length, finite box coordinates) and an encoded image that
    TensorFlow cannot decode at the size the record states."""
    problem, fields = example_fields(serialized)
    if problem:
        return problem
    return image_problem(fields["encoded"], (fields["height"], fields["width"]))


def example_fields(serialized: bytes) -> Tuple[Optional[str], Optional[dict]]:
    """(what keeps the pipeline's parser from reading a record, or None; the values it would read)."""
    try:
        example = tf.train.Example.FromString(serialized)
    except DecodeError:
        return "does not parse as a tf.train.Example", None
    features = example.features.feature
    values = {}
    for key, kind in _KINDS.items():
        if key not in features:
            continue
        feature = features[key]
        actual = feature.WhichOneof("kind")
        if actual is None:
            values[key] = []
            continue
        if actual != kind:
            return f"{key} is a {actual}, not a {kind}", None
        values[key] = getattr(feature, kind).value
        if key in _SCALARS and len(values[key]) != 1:
            return f"{key} has {len(values[key])} values, not 1", None
    if E.ENCODED not in values:
        return f"has no {E.ENCODED}", None
    lengths = {len(values.get(key, ())) for key in (E.YMIN, E.XMIN, E.YMAX, E.XMAX, E.LABEL)}
    if len(lengths) > 1:
        return "its box coordinates and labels are lists of different lengths", None
    for key in (E.YMIN, E.XMIN, E.YMAX, E.XMAX):
        if not all(math.isfinite(v) for v in values.get(key, ())):
            return "has box coordinates that are not finite", None
    return None, {
        "encoded": values[E.ENCODED][0],
        "source_id": values[E.SOURCE_ID][0] if E.SOURCE_ID in values else b"",
        "height": values[E.HEIGHT][0] if E.HEIGHT in values else -1,
        "width": values[E.WIDTH][0] if E.WIDTH in values else -1,
        "boxes": [values.get(key, ()) for key in (E.YMIN, E.XMIN, E.YMAX, E.XMAX)],
        "labels": values.get(E.LABEL, ()),
        "is_crowd": values.get(E.IS_CROWD, ()),
    }


def image_problem(encoded: bytes, stored_size: Tuple[int, int] = (-1, -1)) -> Optional[str]:
    """What keeps TensorFlow from decoding `encoded` at the stored (height, width), or None. Reads headers
    only: a JPEG whose compressed data is damaged but complete decodes (to wrong pixels) and passes."""
    return image_header(encoded, stored_size)[0]


def image_header(encoded: bytes, stored_size: Tuple[int, int] = (-1, -1)
                 ) -> Tuple[Optional[str], Tuple[int, int]]:
    """(image_problem, the (height, width) its header states; (0, 0) when it states none we read)."""
    if encoded[:3] == b"\xff\xd8\xff":
        problem, size = _jpeg_problem(encoded)
    elif encoded[:8] == b"\x89PNG\r\n\x1a\n":
        problem, size = _png_problem(encoded)
    elif encoded[:4] == b"GIF8" or encoded[:2] == b"BM":
        return None, (0, 0)
    else:
        return "its image is not a JPEG, PNG, GIF or BMP", (0, 0)
    if problem:
        return problem, (0, 0)
    if stored_size[0] > 0 and stored_size[1] > 0 and size[0] > 0 and tuple(stored_size) != tuple(size):
        return (f"its image/height × image/width ({stored_size[0]}×{stored_size[1]}) are not its image's "
                f"({size[0]}×{size[1]})"), size
    return None, size


def _jpeg_problem(data: bytes) -> Tuple[Optional[str], Tuple[int, int]]:
    """Walks a JPEG's marker segments up to its first scan, as libjpeg does."""
    position, size, tables, end = 2, None, False, len(data)
    while position + 4 <= end:
        if data[position] != 0xFF:  # libjpeg skips stray bytes up to the next marker, and so do we
            position = data.find(b"\xff", position)
            if position < 0:
                break
            continue
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a segment
            position += 2
            continue
        if marker == 0xD9:
            return "its JPEG ends before any image data", (0, 0)
        length = (data[position + 2] << 8) | data[position + 3]
        if length < 2:
            return "its JPEG header is damaged", (0, 0)
        if marker == 0xDA:  # start of scan: the compressed data follows
            if size is None:
                return "its JPEG has no frame header", (0, 0)
            if not tables:
                return "its JPEG has no quantization table", (0, 0)
            # In compressed data every 0xFF byte is followed by 0x00 or a restart marker: FF D9 is the end
            # (searched from the end: an embedded thumbnail's own FF D9 lies before the scan).
            if data.rfind(b"\xff\xd9") < position + 2 + length:
                return "its JPEG is truncated (no end-of-image marker)", (0, 0)
            return None, size
        if marker in _SOF_MARKERS and position + 9 <= end:
            size = (struct.unpack(">H", data[position + 5:position + 7])[0],
                    struct.unpack(">H", data[position + 7:position + 9])[0])
        elif marker == 0xDB:
            tables = True
        position += 2 + length
    return "its JPEG is truncated inside its header", (0, 0)


def _png_problem(data: bytes) -> Tuple[Optional[str], Tuple[int, int]]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return "its PNG header is damaged", (0, 0)
    width, height = struct.unpack(">II", data[16:24])
    if data.rfind(b"IEND") < 0:
        return "its PNG is truncated (no IEND chunk)", (0, 0)
    return None, (height, width)


# --- one shard --------------------------------------------------------------------------------------------------

class _Window:
    """Sequential reads of a file through one large buffer (tf.io.gfile: local paths, gs://, s3://, hdfs://)."""

    def __init__(self, handle, chunk: int = 4 << 20):
        self.handle, self.chunk = handle, chunk
        self.start, self.data = 0, b""

    def read(self, offset: int, count: int) -> bytes:
        """Up to `count` bytes at `offset` (fewer at the end of the file)."""
        begin = offset - self.start
        if begin < 0 or begin + count > len(self.data):
            self.handle.seek(offset)
            self.start, self.data = offset, self.handle.read(max(count, self.chunk))
            begin = 0
        return self.data[begin:begin + count]


class ShardReader:
    """Good records of one shard, in order; bad ones go to the tally and the reading goes on after them."""

    def __init__(self, path: str, tally: CorruptRecords):
        self.path, self.tally = path, tally

    def __iter__(self) -> Iterator[bytes]:
        for record, _, problem in self.all_records():
            if problem is None:
                yield record

    def all_records(self) -> Iterator[Tuple[bytes, int, Optional[str]]]:
        """(record, byte offset, what is wrong with its content or None) of every record that passes its CRCs;
        those that do not are only counted."""
        path, tally = self.path, self.tally
        try:
            stat = tf.io.gfile.stat(path)
            handle = tf.io.gfile.GFile(path, "rb")
        except (tf.errors.OpError, OSError) as error:
            tally.bad(path, None, f"cannot be read ({_first_line(error)})", weight=tally.known_size(path))
            return
        size = stat.length
        checked = tally.verified((path, size, stat.mtime_nsec))
        window = _Window(handle)
        offset, good = 0, 0
        try:
            while offset < size:
                header = window.read(offset, HEADER)
                if len(header) < HEADER:
                    tally.bad(path, offset, "truncated (the shard ends inside a record's header)")
                    return
                length, length_crc = _HEADER.unpack(header)
                if masked_crc32c(header[:8]) != length_crc:
                    found = tally.resync_point(path, offset, lambda: self._next_record(window, offset + 1, size))
                    if found is None:
                        tally.bad(path, offset, "fails its CRC (its length was changed) and no good record follows")
                        return
                    tally.bad(path, offset, f"fails its CRC (its length was changed; {found - offset} bytes skipped)")
                    offset = found
                    continue
                end = offset + HEADER + length + FOOTER
                if end > size:
                    tally.bad(path, offset, f"truncated (a {length}-byte record, and the shard ends {end - size} "
                                            "bytes short)")
                    return
                record = window.read(offset + HEADER, length)
                if masked_crc32c(record) != _FOOTER.unpack(window.read(offset + HEADER + length, FOOTER))[0]:
                    tally.bad(path, offset, "fails its CRC (the record's bytes were changed)")
                    offset = end
                    continue
                problem = None if offset in checked else parse_example(record)
                if problem is None:
                    checked.add(offset)
                    good += 1
                    tally.good()
                else:
                    tally.bad(path, offset, problem)
                yield record, offset, problem
                offset = end
        except (tf.errors.OpError, OSError) as error:  # gone or unreadable halfway through
            tally.bad(path, offset, f"cannot be read any more ({_first_line(error)})")
            return
        finally:
            handle.close()
        tally.shard_read(path, good)

    @staticmethod
    def _next_record(window: _Window, start: int, size: int, block: int = 1 << 20) -> Optional[int]:
        """The first offset at or after `start` where a whole record passes both CRCs."""
        position = start
        while position + HEADER + FOOTER <= size:
            data = window.read(position, block + HEADER)
            windows = len(data) - HEADER + 1
            if windows < 1:
                return None
            lengths = np.ndarray((windows,), "<u8", data, 0, (1,))
            room = size - (position + np.arange(windows, dtype=np.int64)) - HEADER - FOOTER
            # a header's length must fit in what is left of the shard: that rules out most positions at once
            for index in np.flatnonzero(lengths.astype(np.float64) <= room).tolist():
                if masked_crc32c(data[index:index + 8]) != _FOOTER.unpack(data[index + 8:index + 12])[0]:
                    continue
                candidate = position + index
                length = int(lengths[index])
                record = window.read(candidate + HEADER, length + FOOTER)
                if masked_crc32c(record[:length]) == _FOOTER.unpack(record[length:])[0]:
                    return candidate
            position += windows
        return None


def _first_line(error: Exception) -> str:
    text = getattr(error, "message", None) or str(error)
    return text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__


@tf.autograph.experimental.do_not_convert
def records_dataset(path: tf.Tensor, tally: CorruptRecords, block: int = 32) -> tf.data.Dataset:
    """The good records of the shard at `path` (a string tensor, as interleave gives it), as a dataset. They
    cross from Python in blocks: one call per record would cost more than the checks."""
    def generate(name):
        records = []
        for record in ShardReader(name.decode() if isinstance(name, bytes) else str(name), tally):
            records.append(record)
            if len(records) == block:
                yield records
                records = []
        if records:
            yield records

    blocks = tf.data.Dataset.from_generator(generate, args=(path,), output_signature=tf.TensorSpec([None], tf.string))
    return blocks.unbatch()
