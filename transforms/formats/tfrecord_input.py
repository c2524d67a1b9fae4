"""TFRecord input (`--input_format tfrecord`): files of serialized tf.Examples, plain or gzip.

Frames are checked with their CRCs record by record, so one corrupt record becomes one error
row instead of failing the file; gzip is detected from the magic bytes, not the file name. The
records reach the parse step as they are (a `RecordBatch` of serialized examples), and the key
stays inside them: the model step reads it with the dtype found here (`key_dtype`, from the
first record when the key is not a feature of the spec).
"""
from __future__ import annotations

import struct
import zlib
from typing import Iterator

import numpy as np

from transforms.errors import InputError
from transforms.formats.base import (DEFAULT_MAX_RECORD_BYTES, PAYLOAD_KEEP, READ_CHUNK,
                                     InputFormat, open_shard, shard_stream)
from transforms.records import RecordBatch, error_row

__all__ = ["TFRecordInput", "TFRECORD", "iter_tfrecord_batches", "iter_tfrecords"]

# --- framing ------------------------------------------------------------------------------------
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_HEADER = struct.Struct("<QI")
_CRC = struct.Struct("<I")


def _masked(c: int) -> int:
    return ((((c >> 15) | (c << 17)) & _U32) + _MASK_DELTA) & _U32


def iter_tfrecord_batches(stream, max_records: int, chunk_bytes: int = READ_CHUNK,
                          max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[tuple]:
    """Yield ("ok", payloads, indices) lists of up to max_records good records, and
    ("error", index, error_type, message, payload) where a frame is damaged.

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
    buf, pos, index, eof = b"", 0, 0, False
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


# --- the format ---------------------------------------------------------------------------------
class TFRecordInput(InputFormat):
    """Serialized tf.Examples in TFRecord frames (gzip or not, whatever the name says)."""
    name = "tfrecord"
    title = "TFRecord"
    extensions = (".tfrecord", ".tfrecords", ".tfrecord.gz", ".gz")
    keys_in_examples = True

    def read_shard(self, path: str, batch_size: int, columns: list[str] | None,
                   max_record_bytes: int, stats: dict) -> Iterator:
        with shard_stream(path, stats) as stream:
            for item in iter_tfrecord_batches(stream, batch_size,
                                              max_record_bytes=max_record_bytes):
                if item[0] == "ok":
                    _, payloads, indices = item
                    yield RecordBatch(path, np.array(payloads, dtype=object),
                                      np.array(indices, np.int64))
                else:
                    _, index, etype, message, payload = item
                    yield error_row(path, index, etype, message, payload)

    def key_dtype(self, path: str, key: str,
                  max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> str:
        """The dtype of `key` in the first readable tf.Example of the file."""
        import tensorflow as tf
        stream, _ = open_shard(path)
        try:
            # one record is enough; a corrupt length is an error item, never a huge allocation
            for item in iter_tfrecords(stream, chunk_bytes=64 << 10,
                                       max_record_bytes=max_record_bytes):
                if item[0] != "ok":
                    continue
                try:
                    feature = tf.train.Example.FromString(item[2]).features.feature
                except Exception:
                    continue
                if key not in feature:
                    raise InputError(f"--key_field {key!r} is not a feature of the first record "
                                     f"of {path} (it has: "
                                     f"{', '.join(sorted(feature)) or 'nothing'})")
                kind = feature[key].WhichOneof("kind")
                return {"bytes_list": "string", "int64_list": "int64",
                        "float_list": "float32"}[kind]
        finally:
            stream.close()
        return "string"


TFRECORD = TFRecordInput()
