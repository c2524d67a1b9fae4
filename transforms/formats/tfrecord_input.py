"""TFRecord input (`--input_format tfrecord`): files of serialized tf.Examples, plain or gzip.

Frames are checked with their CRCs record by record, so one corrupt record becomes one error
row instead of failing the file; gzip is detected from the magic bytes, not the file name. The
records reach the parse step as they are (a `RecordBatch` of serialized examples), and the key
stays inside them: the model step reads it with the dtype found here (`key_dtype`, from the
first record when the key is not a feature of the spec).

A plain file is splittable (see `transforms.formats.base`). Frames say nothing of where they
are, so a range of the file that starts anywhere is *resynchronised*: its first frame is the
first offset whose length field and data both match their CRCs. That guess can be wrong (a
frame nested in another record's payload looks exactly like one; a frame with a bad data CRC
or above --max_record_bytes is passed over), so the guesses are only trusted where they agree
with the file's one true chain of frames: `index_file` follows that chain from offset 0,
range by range, and re-walks a range whose guess is not where the chain enters it. A walk
reads frame headers only (12 bytes a frame, payloads skipped): the chain is fixed by the
length fields alone, whatever the payloads and their CRCs hold.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import struct
import zlib
from typing import Iterator

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.errors import InputError
from transforms.formats.base import (DEFAULT_MAX_RECORD_BYTES, PAYLOAD_KEEP, READ_CHUNK,
                                     ColumnType, InputFormat, SplitIndex, open_range,
                                     open_shard, shard_stream)
from transforms.records import RecordBatch, error_row

__all__ = ["TFRecordInput", "TFRECORD", "RangeSummary", "iter_tfrecord_batches",
           "iter_tfrecords"]

_LOG = logging.getLogger(__name__)
# a tf.Example feature's kind -> the dtype its values are read as
_KIND_DTYPES = {"bytes_list": "string", "int64_list": "int64", "float_list": "float32"}

# --- framing ------------------------------------------------------------------------------------
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_HEADER = struct.Struct("<QI")
_CRC = struct.Struct("<I")


def _masked(c: int) -> int:
    return ((((c >> 15) | (c << 17)) & _U32) + _MASK_DELTA) & _U32


def iter_tfrecord_batches(stream, max_records: int, chunk_bytes: int = READ_CHUNK,
                          max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                          first_index: int = 0) -> Iterator[tuple]:
    """Yield ("ok", payloads, indices) lists of up to max_records good records, and
    ("error", index, error_type, message, payload) where a frame is damaged.

    `stream` starts at a frame; its first record has index `first_index` (a block of a split
    file starts at a record of the file's middle: indices, and the counts of records "read
    before" in messages, are then the file's).

    Both CRCs of every frame are checked (masked CRC32C, as TensorFlow writes them). A bad data
    CRC loses one record; a bad length CRC or a broken stream loses the rest of the file.
    A length above `max_record_bytes` (a CRC-valid length can still be absurd: 2**40) is never
    allocated: the record is read and discarded in chunks, its data CRC checked on the way, and
    becomes one `corrupt_record` row (the first MAX_PAYLOAD_BYTES as payload) before reading
    goes on; if the file ends first, the rest of the file is one `unreadable_tail` row.
    Memory stays within about max_record_bytes + chunk_bytes, and every byte is copied a
    bounded number of times: a record longer than what one read returns is gathered in pieces
    and joined once (gzip's read1 returns small pieces).
    This loop is the reader's hot path: one pass per record, locals only, no calls but the
    two CRCs and one unpack.
    """
    import google_crc32c
    crc32c, extend = google_crc32c.value, google_crc32c.extend
    unpack_header, unpack_crc = _HEADER.unpack_from, _CRC.unpack_from
    # read1 returns what one underlying read gives, so data decoded before a broken gzip
    # tail is not lost with the exception
    read = getattr(stream, "read1", stream.read)
    buf, pos, index, eof = b"", 0, first_index, False
    payloads: list = []
    indices: list = []
    try:
        while True:
            if len(buf) - pos < 12 and not eof:
                chunk = read(chunk_bytes)
                eof = not chunk
                buf, pos = buf[pos:] + chunk, 0
                continue
            if len(buf) - pos < 12:
                if len(buf) - pos:
                    if payloads:
                        yield ("ok", payloads, indices)
                        payloads, indices = [], []
                    yield ("error", index, "corrupt_record",
                           f"truncated record header at the end of the file ({len(buf) - pos} "
                           f"bytes); {index} records were read before it", buf[pos:])
                break
            length, length_crc = unpack_header(buf, pos)
            c = crc32c(buf[pos:pos + 8])
            if ((((c >> 15) | (c << 17)) & _U32) + _MASK_DELTA) & _U32 != length_crc:
                if payloads:
                    yield ("ok", payloads, indices)
                    payloads, indices = [], []
                # the row shows the 64 bytes from the bad header, wherever the last read
                # happened to end (so that a block of a split file shows the same bytes)
                try:
                    while len(buf) - pos < 64 and not eof:
                        chunk = read(chunk_bytes)
                        eof = not chunk
                        buf, pos = buf[pos:] + chunk, 0
                except (OSError, EOFError, zlib.error):
                    pass  # the row shows what could be read
                yield ("error", index, "unreadable_tail",
                       f"bad record length checksum (not a TFRecord file, or corrupt); {index} "
                       "records were read before it and the remainder of the file was not",
                       buf[pos:pos + 64])
                break
            if length > max_record_bytes:
                if payloads:
                    yield ("ok", payloads, indices)
                    payloads, indices = [], []
                # read past it in chunks: head for the payload, CRC extended piece by piece
                data = buf[pos + 12:pos + 12 + length]
                head, crc, left = data[:PAYLOAD_KEEP], crc32c(data), length - len(data)
                buf, pos = buf[pos + 12 + len(data):], 0
                while left and not eof:
                    chunk = read(min(chunk_bytes, left))
                    eof = not chunk
                    if len(head) < PAYLOAD_KEEP:
                        head += chunk[:PAYLOAD_KEEP - len(head)]
                    crc = extend(crc, chunk)
                    left -= len(chunk)
                pieces = [buf]
                while sum(map(len, pieces)) < 4 and not eof:
                    chunk = read(chunk_bytes)
                    eof = not chunk
                    pieces.append(chunk)
                buf = b"".join(pieces)
                if left or len(buf) < 4:
                    yield ("error", index, "unreadable_tail",
                           f"record length {length} is more than the rest of the file holds "
                           f"(and above --max_record_bytes {max_record_bytes}); {index} records "
                           "were read before it and the remainder of the file was not", head)
                    break
                crc_ok = _masked(crc) == unpack_crc(buf, 0)[0]
                yield ("error", index, "corrupt_record",
                       f"record of {length} bytes is larger than --max_record_bytes "
                       f"({max_record_bytes}); skipped (its data checksum "
                       f"{'matches' if crc_ok else 'does not match'})", head)
                pos = 4
                index += 1
                continue
            end = pos + 12 + length
            if end + 4 > len(buf):
                if eof:
                    if payloads:
                        yield ("ok", payloads, indices)
                        payloads, indices = [], []
                    yield ("error", index, "corrupt_record",
                           f"truncated last record (needs {length} bytes); {index} records "
                           "were read before it", buf[pos + 12:])
                    break
                # gather the pieces the record still needs, then join them once
                pieces, need = [buf[pos:]], end + 4 - len(buf)
                while need > 0:
                    chunk = read(max(chunk_bytes, need))
                    if not chunk:
                        eof = True
                        break
                    pieces.append(chunk)
                    need -= len(chunk)
                buf, pos = b"".join(pieces), 0
                continue
            data = buf[pos + 12:end]
            c = crc32c(data)
            if ((((c >> 15) | (c << 17)) & _U32) + _MASK_DELTA) & _U32 != \
                    unpack_crc(buf, end)[0]:
                if payloads:
                    yield ("ok", payloads, indices)
                    payloads, indices = [], []
                yield ("error", index, "corrupt_record", "record data checksum mismatch", data)
            else:
                payloads.append(data)
                indices.append(index)
                if len(payloads) >= max_records:
                    yield ("ok", payloads, indices)
                    payloads, indices = [], []
            pos = end + 4
            index += 1
    except (OSError, EOFError, zlib.error) as e:  # broken or cut-short gzip stream
        if payloads:
            yield ("ok", payloads, indices)
        yield ("error", index, "unreadable_tail",
               f"cannot decompress the file ({e}); {index} records were read before it and the "
               "remainder of the file was not", None)
        return
    if payloads:
        yield ("ok", payloads, indices)


def iter_tfrecords(stream, chunk_bytes: int = READ_CHUNK,
                   max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[tuple]:
    """Record by record: ("ok", index, payload) or ("error", index, type, message, payload)."""
    for item in iter_tfrecord_batches(stream, 1 << 16, chunk_bytes, max_record_bytes):
        if item[0] == "ok":
            yield from (("ok", i, p) for i, p in zip(item[2], item[1]))
        else:
            yield item


# --- splitting ---------------------------------------------------------------------------------
_FIRST_WINDOW = 64 << 10  # bytes searched first for a range's first frame (then 4x more a time)


@dataclasses.dataclass(frozen=True)
class RangeSummary:
    """What `summarize_range` found in the bytes [start, stop) of a file.

    `first`: the frame it started from: 0 for the file's first range, else the first offset
    >= start where a frame's length and data both pass their CRCs (None: none before stop).
    `count`: the frames whose header starts in [first, stop), following lengths from `first`.
    `next`: the first frame start >= stop on that walk, or None when the frames ended before
    stop (the file's rest is then one error row, counted in `count`); `end` says why.
    From a true frame start the walk is the file's own; `index_file` checks `first`.
    """
    first: int | None
    count: int = 0
    next: int | None = None
    end: str | None = None


@functools.lru_cache(maxsize=1)
def _length_crc_tables() -> tuple[np.ndarray, int]:
    """CRC32C of 8 bytes as a sum of lookups: crc(m) == zero ^ tables[0][m[0]] ^ ... ^
    tables[7][m[7]], since CRC32C (like every CRC) is affine in the message bits."""
    import google_crc32c
    zero = google_crc32c.value(bytes(8))
    tables = np.array([[google_crc32c.value(bytes(j) + bytes([x]) + bytes(7 - j)) ^ zero
                        for x in range(256)] for j in range(8)], np.uint32)
    return tables, zero


def _length_crc_matches(byte_at) -> np.ndarray:
    """Where the masked CRC32C of bytes 0..7 of a header equals its bytes 8..11;
    `byte_at(j)` is the array of every candidate's byte j."""
    tables, zero = _length_crc_tables()
    crc = np.full(len(byte_at(0)), zero, np.uint32)
    for j in range(8):
        crc ^= tables[j][byte_at(j)]
    masked = ((crc >> 15) | (crc << 17)) + np.uint32(_MASK_DELTA)  # uint32 wraps as masking does
    stored = byte_at(8).astype(np.uint32)
    for j in range(1, 4):
        stored |= byte_at(8 + j).astype(np.uint32) << (8 * j)
    return masked == stored


def _header_candidates(buf: bytes, base: int, lo: int, hi: int, size: int,
                       max_record_bytes: int) -> np.ndarray:
    """The offsets p in [lo, hi), in order, where a frame could start: its length CRC
    matches, its length fits in the rest of the file and in max_record_bytes. `buf` holds
    the file's bytes from offset `base`, at least up to hi - 1 + 12. Vectorized: no Python
    work per offset, and no more than a few passes over the bytes."""
    b = np.frombuffer(buf, np.uint8)
    i0, n = lo - base, hi - lo
    # a length that fits has its high bytes zero (bytes 4..7 for a file under 4 GiB): a
    # cheap first sieve, which random or text bytes rarely pass
    width = max(1, (min(max_record_bytes, size).bit_length() + 7) // 8)
    high = b[i0 + width:i0 + width + n].copy()
    for j in range(width + 1, 8):
        high |= b[i0 + j:i0 + j + n]
    sieve = high == 0
    idx = np.flatnonzero(sieve)
    if len(idx) > n // 16:  # bytes rich in zeros
        # a header of 12 zero bytes fails its CRC: leave out the offsets in runs of zeros
        nonzero = np.zeros(n + 12, np.int32)
        np.cumsum(b[i0:i0 + n + 11] != 0, dtype=np.int32, out=nonzero[1:])
        sieve &= nonzero[12:] != nonzero[:n]
        idx = np.flatnonzero(sieve)
    if len(idx) > n // 16:  # still many: whole slices beat gathers
        idx = np.flatnonzero(sieve & _length_crc_matches(lambda j: b[i0 + j:i0 + j + n]))
    elif len(idx):
        idx = idx[_length_crc_matches(lambda j: b[idx + (i0 + j)])]
    if not len(idx):
        return idx
    idx += i0
    length = b[idx].astype(np.int64)
    for j in range(1, 6):
        length |= b[idx + j].astype(np.int64) << (8 * j)
    limit = np.minimum(min(max_record_bytes, size), size - 16 - (base + idx))
    return idx[length <= limit] + base


class _FileBytes:
    """Reads of a plain file at any offset (local or remote), keeping the last big read
    (`buf`, the bytes from offset `base`). Reads stop at `size`, the file's listed size."""

    def __init__(self, path: str, size: int):
        self._file = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
        self.size = size
        self.base, self.buf = 0, b""

    def read(self, pos: int, n: int) -> bytes:
        n = min(n, self.size - pos)
        if n <= 0:
            return b""
        self._file.seek(pos)
        pieces = []
        while n > 0:
            piece = self._file.read(n)
            if not piece:
                break
            pieces.append(piece)
            n -= len(piece)
        return b"".join(pieces)

    def load(self, pos: int, n: int) -> bytes:
        self.base, self.buf = pos, self.read(pos, n)
        return self.buf

    def close(self):
        self._file.close()


def _data_crc_ok(f: _FileBytes, p: int) -> bool:
    """Whether the frame at p (its header in f.buf, its length within the file) has the data
    CRC it says: from f.buf when it holds the frame, else read in chunks (the length is at
    most max_record_bytes)."""
    import google_crc32c
    o = p - f.base
    length = _HEADER.unpack_from(f.buf, o)[0]
    if o + 16 + length <= len(f.buf):
        crc = google_crc32c.value(f.buf[o + 12:o + 12 + length])
        stored = _CRC.unpack_from(f.buf, o + 12 + length)[0]
    else:
        crc, pos, left = 0, p + 12, length
        while left:
            chunk = f.read(pos, min(READ_CHUNK, left))
            if not chunk:
                return False
            crc = google_crc32c.extend(crc, chunk)
            pos, left = pos + len(chunk), left - len(chunk)
        tail = f.read(pos, 4)
        if len(tail) < 4:
            return False
        stored = _CRC.unpack_from(tail, 0)[0]
    return _masked(crc) == stored


def _resync(f: _FileBytes, start: int, stop: int, max_record_bytes: int) -> int | None:
    """The first offset in [start, stop) where a whole frame passes both CRCs, or None.
    Searches a small window first (a frame start is usually near), then larger ones; leaves
    in f.buf the window that holds the offset found."""
    last = min(stop, f.size - 15)  # a frame takes 16 bytes at least
    pos, want = start, _FIRST_WINDOW
    while pos < last:
        # the window's offsets with their 12-byte headers
        buf = f.load(pos, min(want, last - pos) + 11)
        hi = min(last, pos + len(buf) - 11)
        if hi <= pos:
            return None  # the file is shorter than its listed size
        for p in _header_candidates(buf, pos, pos, hi, f.size, max_record_bytes):
            if _data_crc_ok(f, int(p)):
                return int(p)
        pos, want = hi, min(want * 4, READ_CHUNK)
    return None


def _walk(f: _FileBytes, pos: int, stop: int) -> tuple[int, int | None, str | None]:
    """Follow frame lengths from the frame start `pos` over the frames whose header starts
    before `stop`, reading their headers only: (frames, the first frame start >= stop, None)
    or, when the frames end before stop as the serial reader ends them (a bad length CRC, a
    header cut short, a frame longer than the rest of the file), (frames counting that last
    one, whose error row is the rest of the file, None, why).

    Reads go in big pieces, contiguous while frames are small; past a long payload the next
    read is small, so that walking a file of long frames reads little beyond its headers.
    This loop runs over whole files, so per frame it does little: a header already seen
    (files repeat their record lengths) is a dict lookup, and only a new one is unpacked and
    has its CRC checked."""
    import google_crc32c
    crc32c, unpack = google_crc32c.value, _HEADER.unpack
    size = f.size
    buf, base, count, step = f.buf, f.base, 0, 0
    last = base + len(buf) - 12  # the last offset whose whole header buf holds
    known: dict = {}  # header bytes -> its frame's length, for headers whose CRC matched
    while pos < stop:
        if pos > last or pos < base:
            if size - pos < 12:
                return count + 1, None, f"record header cut short at {pos}"
            contiguous = base <= pos <= last + 12
            buf, base = f.load(pos, min(READ_CHUNK if contiguous else _FIRST_WINDOW,
                                        stop + 12 - pos)), pos
            last = base + len(buf) - 12
            if len(buf) < 12:
                return count + 1, None, f"record header cut short at {pos}"
        o = pos - base
        header = buf[o:o + 12]
        step = known.get(header)
        if step is None:
            length, length_crc = unpack(header)
            c = crc32c(header[:8])
            if ((((c >> 15) | (c << 17)) & _U32) + _MASK_DELTA) & _U32 != length_crc:
                return count + 1, None, f"bad record length checksum at {pos}"
            step = 16 + length
            if len(known) < 4096:
                known[header] = step
        count += 1
        pos += step
    if pos > size:  # the last frame runs past the end (and so past stop: the loop ended)
        return count, None, f"record at {pos - step} of {step - 16} bytes runs past the end"
    return count, pos, None


# --- the format ---------------------------------------------------------------------------------
class TFRecordInput(InputFormat):
    """Serialized tf.Examples in TFRecord frames (gzip or not, whatever the name says)."""
    name = "tfrecord"
    title = "TFRecord"
    extensions = (".tfrecord", ".tfrecords", ".tfrecord.gz", ".gz")
    keys_in_examples = True
    splittable = True

    @staticmethod
    def _batch_or_row(path: str, item: tuple):
        if item[0] == "ok":
            _, payloads, indices = item
            return RecordBatch(path, np.array(payloads, dtype=object),
                               np.array(indices, np.int64))
        _, index, etype, message, payload = item
        return error_row(path, index, etype, message, payload)

    def read_shard(self, path: str, batch_size: int, columns: list[str] | None,
                   max_record_bytes: int, stats: dict) -> Iterator:
        with shard_stream(path, stats) as stream:
            for item in iter_tfrecord_batches(stream, batch_size,
                                              max_record_bytes=max_record_bytes):
                yield self._batch_or_row(path, item)

    # --- splitting ---
    def summarize_range(self, path: str, start: int, stop: int, size: int,
                        max_record_bytes: int) -> RangeSummary:
        """Where frames start in [start, stop): a `RangeSummary`. The file's first range is
        walked from offset 0; another range from the first offset >= start where a whole
        frame passes both CRCs (found with a vectorized sieve of all offsets; the data CRC is
        checked for the few offsets whose length CRC matches). Reads the range about once,
        and past stop only the rest of a header or of the first frame's data."""
        f = _FileBytes(path, size)
        try:
            first = 0 if start == 0 else _resync(f, start, stop, max_record_bytes)
            if first is None:
                return RangeSummary(None, end="no frame found")
            return RangeSummary(first, *_walk(f, first, stop))
        finally:
            f.close()

    def index_file(self, path: str, size: int, ranges: list[tuple[int, int]],
                   summaries: list, max_record_bytes: int) -> SplitIndex | None:
        """One block per range, from the file's chain of frames: range 0's walk starts at
        offset 0 and ends at the first frame start of the next range; a range whose summary
        started from that very offset continues the chain (its walk is the file's), any
        other range is walked again here from that offset (a resync that landed inside a
        payload, or passed over a damaged or oversized frame: rare).

        Where the frames end before the end of the file (a bad length CRC, a header or a
        frame cut short: the serial reader's last error row, which stands for the rest of the
        file), the block holding that last frame reaches to the end of the file and every
        later block is empty (starts == size). None (read the file whole) when no block but
        the first would hold a record."""
        if len(summaries) != len(ranges) or not ranges or ranges[0][0] != 0 or \
                ranges[-1][1] != size or any(a[1] != b[0] for a, b in zip(ranges, ranges[1:])):
            raise ValueError(f"{path}: the ranges must cover [0, {size}) in order, one summary "
                             f"each (got {len(ranges)} ranges, {len(summaries)} summaries)")
        starts, first_index = [], []
        chain, index, ended = 0, 0, None  # chain: the first frame start >= the range's start
        f, walked = None, 0
        try:
            for (start, stop), summary in zip(ranges, summaries):
                if ended is not None:
                    starts.append(size)
                    first_index.append(index)
                    continue
                starts.append(chain)
                first_index.append(index)
                if chain >= stop:
                    continue  # no frame starts in this range (one long frame spans it)
                if summary.first == chain:
                    count, nxt, end = summary.count, summary.next, summary.end
                else:
                    f = f or _FileBytes(path, size)
                    count, nxt, end = _walk(f, chain, stop)
                    walked += 1
                index += count
                if nxt is None:
                    ended = end
                else:
                    chain = nxt
        finally:
            if f is not None:
                f.close()
        if walked:
            _LOG.debug("%s: %d of %d ranges walked again (their resync was not on the chain "
                       "of frames)", path, walked, len(ranges))
        if len(starts) < 2 or starts[1] >= size:
            _LOG.info("%s: read whole, not split: all its records start in its first %d "
                      "bytes%s", path, ranges[0][1], f" ({ended})" if ended else "")
            return None
        return SplitIndex(path, size, split=True, starts=tuple(starts),
                          first_index=tuple(first_index), first_line=(0,) * len(starts))

    def read_block(self, index: SplitIndex, block: int, batch_size: int,
                   columns: list[str] | None, max_record_bytes: int,
                   stats: dict) -> Iterator:
        """The serial framing loop over the block's bytes alone, numbering from the block's
        first index: a block is whole frames (its last frame ends where the next block
        starts, or is the file's last error row and the block reaches the end)."""
        if not index.split:
            yield from self.read_shard(index.path, batch_size, columns, max_record_bytes,
                                       stats)
            return
        stats["gzip"], stats["bytes"] = False, 0
        start, stop = index.starts[block], index.end(block)
        if start >= stop:
            return
        stream = open_range(index.path, start, stop, stats)
        try:
            for item in iter_tfrecord_batches(stream, batch_size,
                                              max_record_bytes=max_record_bytes,
                                              first_index=index.first_index[block]):
                yield self._batch_or_row(index.path, item)
        finally:
            stats["bytes"] = stream.raw.read_bytes
            stream.close()

    def _features(self, path: str, max_record_bytes: int, limit: int = 1):
        """The features of the first `limit` readable tf.Examples of the file."""
        import tensorflow as tf
        stream, _ = open_shard(path)
        found = 0
        try:
            # a corrupt length is an error item, never a huge allocation
            for item in iter_tfrecords(stream, chunk_bytes=64 << 10,
                                       max_record_bytes=max_record_bytes):
                if item[0] != "ok":
                    continue
                try:
                    feature = tf.train.Example.FromString(item[2]).features.feature
                except Exception:
                    continue
                yield feature
                found += 1
                if found == limit:
                    return
        finally:
            stream.close()

    def _first_features(self, path: str, max_record_bytes: int):
        """The features of the first readable tf.Example of the file, or None."""
        return next(self._features(path, max_record_bytes), None)

    def key_dtype(self, path: str, key: str,
                  max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> str:
        """The dtype of `key` in the first readable tf.Example of the file."""
        feature = self._first_features(path, max_record_bytes)
        if feature is None:
            return "string"
        if key not in feature:
            raise InputError(f"--key_field {key!r} is not a feature of the first record "
                             f"of {path} (it has: {', '.join(sorted(feature)) or 'nothing'})")
        return _KIND_DTYPES[feature[key].WhichOneof("kind")]

    def field_type(self, path: str, name: str,
                   max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> ColumnType | None:
        """The kind `name` has in the first tf.Example of the file that holds it (of the
        first 1,000): one value when it holds one there, else a list."""
        for feature in self._features(path, max_record_bytes, 1000):
            kind = feature[name].WhichOneof("kind") if name in feature else None
            if kind is not None:
                one = len(getattr(feature[name], kind).value) == 1
                return ColumnType(_KIND_DTYPES[kind], () if one else (None,))
        return None


TFRECORD = TFRecordInput()
