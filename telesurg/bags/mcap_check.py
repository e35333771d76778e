"""Damage in an MCAP file: every chunk checked against its checksum and its own structure.

A reader that meets a damaged chunk does not always say so: rosbags skips records it does not
expect and messages of channels it does not know, and reads a chunk whose checksum is 0 (not
computed) as it is. So a bag is checked whole before it is read: each chunk the summary indexes
must be a Chunk record of the indexed length, decompress to its stated size and CRC-32 (when
it carries one: telesurg's recorder writes them, see bags.storage), and hold only schema,
channel and message records that end exactly at its end, each message of a known channel,
within the chunk's time range, as many per channel as its Message Index records list.

Plain Python (struct, zlib); the decompressors are rosbags'.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field, replace

from rosbags.rosbag2.storage_mcap import DECOMPRESSORS

MAGIC = b"\x89MCAP0\r\n"
_RECORD_HEAD = struct.Struct("<BQ")  # opcode, body length
_FOOTER = struct.Struct("<BQQQI")  # opcode, length 20, summary start, summary offset start, crc
_CHUNK_HEAD = struct.Struct("<QQQI")  # message start, message end, uncompressed size, crc
_MESSAGE_HEAD = struct.Struct("<HIQQ")  # channel, sequence, log time, publish time
SCHEMA, CHANNEL, MESSAGE, CHUNK, MESSAGE_INDEX, CHUNK_INDEX = 0x03, 0x04, 0x05, 0x06, 0x07, 0x08
#: The byte offset of a chunk's CRC-32 field from the start of its record.
CHUNK_CRC_OFFSET = _RECORD_HEAD.size + 24


@dataclass(frozen=True)
class ChunkDamage:
    """A chunk that cannot be trusted, and what it held as far as its index says."""

    offset: int  # of its record in the file
    length: int  # of its record, as indexed
    index_length: int  # of the Message Index records that follow it
    start_ns: int  # the log times of its messages, as indexed
    end_ns: int
    problem: str
    messages: dict[int, int] = field(default_factory=dict)  # channel id: messages indexed


@dataclass(frozen=True)
class _IndexedChunk:
    offset: int
    length: int
    start_ns: int
    end_ns: int
    compression: str
    message_index_offsets: dict[int, int]  # channel id: offset of its Message Index record
    index_length: int  # of those records, which follow the chunk


def chunk_crc(records: bytes) -> int:
    """The CRC-32 an MCAP Chunk record carries for its uncompressed records."""
    return zlib.crc32(records)


def mcap_damage(data: bytes) -> tuple[list[ChunkDamage], dict[int, str]]:
    """The damaged chunks of the MCAP file data, and its channels ({id: topic}).

    The chunks are those the summary indexes or, in a file without a summary index (a
    recording closed after its recorder died), those found walking its records. ValueError if
    the footer or the summary (what finds the chunks) is itself unreadable."""
    summary = _summary_records(data)
    data_section = list(_data_section(data))
    channels = {channel: topic for opcode, body in summary + [
                    (opcode, data[at + _RECORD_HEAD.size:at + _RECORD_HEAD.size + length])
                    for at, opcode, length in data_section]
                if opcode == CHANNEL for channel, topic in [_channel(body)]}
    chunks = [_chunk_index(body) for opcode, body in summary if opcode == CHUNK_INDEX]
    # Without a summary index, readers scan the chunks and no message index is read: a chunk
    # cut off from its Message Index records (the recorder died) is then whole.
    indexed_by_summary = bool(chunks)
    damaged = []
    for chunk in sorted(chunks or _walked_chunks(data, data_section),
                        key=lambda chunk: chunk.offset):  # channels come in file order
        indexed = _indexed_counts(data, chunk) if indexed_by_summary else {}
        problem = _chunk_problem(data, chunk, channels, indexed)
        if problem:
            damaged.append(ChunkDamage(chunk.offset, chunk.length, chunk.index_length,
                                       chunk.start_ns, chunk.end_ns, problem, indexed or {}))
    return damaged, channels


def _summary_records(data: bytes) -> list[tuple[int, bytes]]:
    if len(data) < 2 * len(MAGIC) + _FOOTER.size or not data.startswith(MAGIC) \
            or not data.endswith(MAGIC):
        raise ValueError("not a complete MCAP file")
    opcode, length, summary_start, _, _ = _FOOTER.unpack_from(
        data, len(data) - len(MAGIC) - _FOOTER.size)
    footer_at = len(data) - len(MAGIC) - _FOOTER.size
    if opcode != 0x02 or length != 20 or not 0 <= summary_start <= footer_at:
        raise ValueError("its footer is damaged")
    if not summary_start:
        return []  # no summary: readers scan the records
    records = []
    offset = summary_start
    while offset < footer_at:
        if offset + _RECORD_HEAD.size > footer_at:
            raise ValueError(f"its summary is damaged at byte {offset}")
        opcode, length = _RECORD_HEAD.unpack_from(data, offset)
        body = offset + _RECORD_HEAD.size
        if body + length > footer_at:
            raise ValueError(f"its summary is damaged at byte {offset}")
        records.append((opcode, data[body:body + length]))
        offset = body + length
    return records


def _data_section(data: bytes):
    """(offset, opcode, body length) of the records after the magic, up to the Data End record
    or the first one whose length runs past the file (damage, found again chunk by chunk)."""
    offset = len(MAGIC)
    while offset + _RECORD_HEAD.size <= len(data):
        opcode, length = _RECORD_HEAD.unpack_from(data, offset)
        if opcode in (0x0F, 0x02) or offset + _RECORD_HEAD.size + length > len(data):
            return
        yield offset, opcode, length
        offset += _RECORD_HEAD.size + length


def _walked_chunks(data: bytes, data_section: list) -> list[_IndexedChunk]:
    """The chunks of the data section, each with the Message Index records right after it."""
    chunks = []
    for at, opcode, length in data_section:
        body = at + _RECORD_HEAD.size
        if opcode == CHUNK and length >= _CHUNK_HEAD.size + 4:
            start, end, _, _ = _CHUNK_HEAD.unpack_from(data, body)
            compression, _ = _string(data[body:body + length], _CHUNK_HEAD.size)
            chunks.append(_IndexedChunk(at, _RECORD_HEAD.size + length, start, end,
                                        compression, {}, 0))
        elif opcode == MESSAGE_INDEX and chunks and (
                at == chunks[-1].offset + chunks[-1].length + chunks[-1].index_length):
            (channel,) = struct.unpack_from("<H", data, body)
            chunks[-1].message_index_offsets[channel] = at
            chunks[-1] = replace(chunks[-1],
                                 index_length=chunks[-1].index_length + _RECORD_HEAD.size + length)
    return chunks


def _string(body: bytes, at: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<I", body, at)
    return body[at + 4:at + 4 + length].decode("utf-8", "replace"), at + 4 + length


def _channel(body: bytes) -> tuple[int, str]:
    (channel,) = struct.unpack_from("<H", body)
    topic, _ = _string(body, 4)  # after the channel id and the schema id
    return channel, topic


def _chunk_index(body: bytes) -> _IndexedChunk:
    start, end, offset, length, offsets_length = struct.unpack_from("<QQQQI", body)
    at = 36
    offsets = dict(struct.iter_unpack("<HQ", body[at:at + offsets_length]))
    at += offsets_length
    (index_length,) = struct.unpack_from("<Q", body, at)
    compression, _ = _string(body, at + 8)
    return _IndexedChunk(offset, length, start, end, compression, offsets, index_length)


def _indexed_counts(data: bytes, chunk: _IndexedChunk) -> dict[int, int] | None:
    """{channel: messages} its Message Index records list; None if one of them is unreadable."""
    counts = {}
    for channel, offset in chunk.message_index_offsets.items():
        if offset + _RECORD_HEAD.size + 6 > len(data):
            return None
        opcode, _ = _RECORD_HEAD.unpack_from(data, offset)
        found, entries_length = struct.unpack_from("<HI", data, offset + _RECORD_HEAD.size)
        if opcode != MESSAGE_INDEX or found != channel or entries_length % 16:
            return None
        counts[channel] = entries_length // 16
    return counts


def _chunk_problem(data: bytes, chunk: _IndexedChunk, channels: dict[int, str],
                   indexed: dict[int, int] | None) -> str:
    """What is wrong with one indexed chunk ("" if nothing); the channels it defines are
    added to channels."""
    at = chunk.offset
    if at + chunk.length > len(data) or chunk.length < _RECORD_HEAD.size + _CHUNK_HEAD.size:
        return "its record lies outside the file"
    opcode, length = _RECORD_HEAD.unpack_from(data, at)
    if opcode != CHUNK or _RECORD_HEAD.size + length != chunk.length:
        return "its record header is damaged"
    body = data[at + _RECORD_HEAD.size:at + chunk.length]
    start, end, size, crc = _CHUNK_HEAD.unpack_from(body)
    compression, records_at = _string(body, _CHUNK_HEAD.size)
    if (start, end, compression) != (chunk.start_ns, chunk.end_ns, chunk.compression) \
            or records_at + 8 > len(body):
        return "its header disagrees with its index"
    (compressed_length,) = struct.unpack_from("<Q", body, records_at)
    compressed = body[records_at + 8:records_at + 8 + compressed_length]
    if len(compressed) != compressed_length or compression not in DECOMPRESSORS:
        return "its records are damaged"
    try:
        records = DECOMPRESSORS[compression](compressed, size)
    except Exception:  # the decompressors raise their own kinds  # noqa: BLE001
        return "its records do not decompress"
    if len(records) != size:
        return "its records do not have their stated size"
    if crc and chunk_crc(records) != crc:
        return "its records fail their checksum"
    if indexed is None:
        return "its message index is damaged"
    return _records_problem(records, start, end, channels, indexed or None)


def _records_problem(records: bytes, start: int, end: int, channels: dict[int, str],
                     indexed: dict[int, int] | None) -> str:
    """What is wrong with a chunk's records; indexed: its messages per channel by its Message
    Index records (None: not compared)."""
    counts: dict[int, int] = {}
    offset = 0
    while offset < len(records):
        if offset + _RECORD_HEAD.size > len(records):
            return f"its records break off at byte {offset} of the chunk"
        opcode, length = _RECORD_HEAD.unpack_from(records, offset)
        body = offset + _RECORD_HEAD.size
        if opcode not in (SCHEMA, CHANNEL, MESSAGE) or body + length > len(records):
            return f"its records are damaged at byte {offset} of the chunk"
        if opcode == CHANNEL:
            channel, topic = _channel(records[body:body + length])
            channels[channel] = topic
        elif opcode == MESSAGE:
            if length < _MESSAGE_HEAD.size:
                return f"a message is damaged at byte {offset} of the chunk"
            channel, _, log_time, _ = _MESSAGE_HEAD.unpack_from(records, body)
            if channel not in channels or not start <= log_time <= end:
                return f"a message is damaged at byte {offset} of the chunk"
            counts[channel] = counts.get(channel, 0) + 1
        offset = body + length
    if indexed is not None and counts != {channel: n for channel, n in indexed.items() if n}:
        return "its messages disagree with its index"
    return ""
