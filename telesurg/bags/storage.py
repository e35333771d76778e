"""Sessions as rosbag2 files: writing with crash checkpoints, reading with one-line errors,
and their messages decoded (decode).

Plain Python over the `rosbags` library (no rclpy): the bags are real rosbag2 directories
(metadata.yaml and one MCAP or sqlite3 file) that `ros2 bag info`, `ros2 bag play` and the MCAP
tools accept. A BagWriter checkpoints every second (the open chunk written out, metadata.yaml
rewritten and marked as a recording in progress), so a crashed recording loses at most the last
second; readers here accept such an unclosed bag, while a closed bag cut short is an error.
Every problem reading a bag is a BagError whose message names the file.
"""

from __future__ import annotations

import copy
import os
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from telesurg.bags.mcap_check import CHUNK_CRC_OFFSET, ChunkDamage, chunk_crc, mcap_damage
from telesurg.contract.topics import TOPICS

#: Storage formats a bag can be written in; the first is the default (as in `ros2 bag record`).
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
#: Message definitions and type hashes written into new bags: the ROS 2 distribution the
#: package's message wheels come from.
TYPESTORE = get_typestore(Stores.ROS2_KILTED)


def _definition_prefixes() -> list[Path]:
    """Where installed message definitions are looked for: the ament prefixes (a sourced ROS 2
    install), then this interpreter's prefix (the venv that `make setup` builds them into)."""
    prefixes = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    return prefixes + [Path(sys.prefix)]


def _register_installed_types(type_names) -> dict[str, str]:
    """Adds to TYPESTORE the message types it lacks (CRTK's), from the .msg files their packages
    install (share/<package>/msg/<Name>.msg), so bags carry their definitions and hashes like any
    other. {type: why not registered} for those whose definition was not found."""
    missing = {}
    for type_name in sorted(set(type_names) - set(TYPESTORE.fielddefs)):
        package, _, name = type_name.split("/")
        candidates = [prefix / "share" / package / "msg" / f"{name}.msg"
                      for prefix in _definition_prefixes()]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            missing[type_name] = (f"its definition is in none of {', '.join(map(str, candidates))}"
                                  f" (is {package} installed, or AMENT_PREFIX_PATH set?)")
            continue
        TYPESTORE.register(get_types_from_msg(found.read_text(), type_name))
    return missing


#: Contract types whose definitions were not found, and why (a bag cannot hold them).
UNREGISTERED_TYPES = _register_installed_types(topic.type_name for topic in TOPICS)
CHECKPOINT_PERIOD_S = 1.0
#: metadata.yaml custom_data of a bag whose recording has not closed it (yet).
RECORDING_KEY = "telesurg.bags.recorder"
IN_PROGRESS = "in progress"


class BagError(Exception):
    """A bag that cannot be read or written; the message names the file and the problem."""


def decode(data: bytes, type_name: str):
    """A recorded message (CDR bytes) of type_name as a message object, in pure Python. Its
    fields have the names of rclpy's messages; values differ in kind only where rclpy uses
    its own containers: numeric arrays come as numpy arrays, DiagnosticStatus.level as an
    int. Raises on a payload that does not decode (rosbags raises several kinds)."""
    if type_name in UNREGISTERED_TYPES:
        raise BagError(f"cannot decode {type_name}: {UNREGISTERED_TYPES[type_name]}")
    return TYPESTORE.deserialize_cdr(data, type_name)


@dataclass(frozen=True)
class BagTopic:
    name: str
    type: str
    count: int
    qos: tuple[Qos, ...]  # as the recorded publishers offered it


class _NoStorage:
    """Stands in for the writer's storage when only metadata.yaml is to be written."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def close(self, version: int, metadata: str) -> None:
        """The real storage stays open."""


class BagWriter:
    """A rosbag2 bag being recorded: topics added as they are first heard, messages written
    as they come, a checkpoint every second (checkpoint_if_due)."""

    def __init__(self, path: Path, storage: str = "mcap") -> None:
        if storage not in STORAGES:
            raise BagError(f"{path}: unknown storage {storage!r} (one of {', '.join(STORAGES)})")
        if path.exists():
            raise BagError(f"{path} exists; a recording never overwrites one")
        self.path = path
        self._writer = Writer(path, version=Writer.VERSION_LATEST,
                              storage_plugin=STORAGES[storage])
        try:
            self._writer.open()
        except OSError as error:  # e.g. a parent that is a file, or not writable
            raise BagError(f"{path}: cannot create the bag: {error.strerror}") from None
        if hasattr(self._writer.storage, "close_chunk"):
            _write_chunk_checksums(self._writer.storage)
        self._connections: dict[str, object] = {}
        self._last_checkpoint = time.monotonic()
        self.checkpoint()

    def has_topic(self, topic: str) -> bool:
        return topic in self._connections

    def add_topic(self, topic: str, type_name: str, qos: Iterable[Qos] = ()) -> None:
        if type_name in UNREGISTERED_TYPES:
            raise BagError(f"{self.path}: cannot record {topic} ({type_name}): "
                           f"{UNREGISTERED_TYPES[type_name]}")
        self._connections[topic] = self._writer.add_connection(
            topic, type_name, typestore=TYPESTORE, offered_qos_profiles=list(qos))

    def write(self, topic: str, stamp_ns: int, data: bytes) -> None:
        """Write one message (CDR bytes) received at stamp_ns."""
        self._writer.write(self._connections[topic], stamp_ns, data)

    def checkpoint_if_due(self) -> None:
        """Checkpoint if the last one is a second old (call at least every second)."""
        if time.monotonic() - self._last_checkpoint >= CHECKPOINT_PERIOD_S:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Put everything written so far on disk, with a metadata.yaml that describes it."""
        storage = self._writer.storage
        if hasattr(storage, "close_chunk"):  # MCAP: the open chunk is only in memory
            if storage.chunk.bio.tell():
                storage.close_chunk()
            storage.bio.flush()
        else:  # sqlite3
            storage.conn.commit()
        # rosbags writes metadata.yaml on close; a copy closed over no storage writes it now,
        # marked as a recording in progress: a reader then knows that a missing MCAP summary
        # means a recorder that died, not a file cut short.
        self._writer.set_custom_data(RECORDING_KEY, IN_PROGRESS)
        shadow = copy.copy(self._writer)
        shadow.storage = _NoStorage(storage.path)
        shadow.close()
        self._last_checkpoint = time.monotonic()

    def close(self) -> None:
        self._writer.custom_data.pop(RECORDING_KEY, None)
        self._writer.close()

    @property
    def counts(self) -> dict[str, int]:
        return {topic: self._writer.counts[c.id] for topic, c in self._connections.items()}


def _write_chunk_checksums(storage) -> None:
    """Make an MCAP storage write each chunk's CRC-32, which rosbags leaves 0 (not computed):
    with it, a reader tells a damaged chunk from a sound one (bags.mcap_check)."""
    close_chunk = storage.close_chunk

    def close_chunk_with_checksum() -> None:
        records = storage.chunk.bio.getvalue()
        chunk_at = storage.bio.tell()
        close_chunk()
        end = storage.bio.tell()
        storage.bio.seek(chunk_at + CHUNK_CRC_OFFSET)
        storage.bio.write(struct.pack("<I", chunk_crc(records)))
        storage.bio.seek(end)

    storage.close_chunk = close_chunk_with_checksum


class BagReader:
    """A rosbag2 bag opened for reading: a directory with metadata.yaml, or a single .mcap or
    .db3 file. Use as a context manager.

    An MCAP file is checked whole first (bags.mcap_check): a damaged chunk is a BagError saying
    where and what it held, unless accept_damage, which reads the rest and says in damage_note
    how many messages of which topics were lost with the damaged chunks."""

    def __init__(self, path: Path, accept_damage: bool = False) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"{self.path}: no such bag")
        self._scratch: tempfile.TemporaryDirectory | None = None
        #: Whether the bag was never closed (its recorder crashed) and was read up to the last
        #: complete chunk, the last checkpoint.
        self.unclosed = False
        #: With accept_damage, what was lost to damage ("" if nothing was).
        self.damage_note = ""
        try:
            self._reader = self._open(self.path)
        except Exception as error:  # rosbags raises many kinds; all mean "not a readable bag"
            if "end magic" not in str(error):
                raise BagError(f"{self.path}: not a readable rosbag2 bag: {_reason(error)}") \
                    from None
            if not self._recording_in_progress():
                raise BagError(f"{self.path}: truncated: its MCAP file ends before the summary "
                               "a closed bag has, so messages are missing") from None
            self._reader = self._open_unclosed()
        self._check_chunks(accept_damage)
        self.topics = {
            c.topic: BagTopic(c.topic, c.msgtype, c.msgcount,
                              tuple(getattr(c.ext, "offered_qos_profiles", ())))
            for c in self._reader.connections}
        self.start_ns = self._reader.start_time
        self.end_ns = self._reader.end_time

    def _recording_in_progress(self) -> bool:
        """Whether metadata.yaml says a telesurg recording had not closed the bag: its
        recorder died (the bag holds what it wrote up to its last checkpoint)."""
        try:
            metadata = yaml.safe_load((self.path / "metadata.yaml").read_text())
            custom = metadata["rosbag2_bagfile_information"].get("custom_data") or {}
        except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
            return False
        return custom.get(RECORDING_KEY) == IN_PROGRESS

    @staticmethod
    def _open(path: Path) -> Reader:
        reader = Reader(path)
        reader.open()
        return reader

    def _open_unclosed(self) -> Reader:
        """Open a copy of an MCAP bag whose recording never closed it, cut after its last
        complete record and given the end a closed file has."""
        mcap = self.path if self.path.is_file() else next(iter(self.path.glob("*.mcap")), None)
        if mcap is None:
            raise BagError(f"{self.path}: not a readable rosbag2 bag: no MCAP file")
        self._scratch = tempfile.TemporaryDirectory(prefix="telesurg-bag-")
        copy_dir = Path(self._scratch.name) / self.path.name
        copy_dir.mkdir()
        if self.path.is_dir() and (self.path / "metadata.yaml").exists():
            shutil.copy(self.path / "metadata.yaml", copy_dir)
        with open(mcap, "rb") as source, open(copy_dir / mcap.name, "wb") as target:
            records = complete_mcap_records(source.read())
            target.write(records + closed_mcap_end(records))
        self.unclosed = True
        try:
            return self._open(copy_dir if self.path.is_dir() else copy_dir / mcap.name)
        except Exception as error:
            raise BagError(f"{self.path}: not a readable rosbag2 bag (never closed, and "
                           f"corrupt before its end): {_reason(error)}") from None

    def _mcap_file(self) -> Path | None:
        if self._scratch is not None:  # an unclosed bag, read through its repaired copy
            return next(Path(self._scratch.name).rglob("*.mcap"))
        if self.path.is_file():
            return self.path if self.path.suffix == ".mcap" else None
        return next(iter(self.path.glob("*.mcap")), None)

    def _check_chunks(self, accept_damage: bool) -> None:
        mcap = self._mcap_file()
        if mcap is None:
            return  # sqlite3: no chunks
        data = mcap.read_bytes()
        try:
            damaged, channels = mcap_damage(data)
        except ValueError as error:
            raise BagError(f"{self.path}: damaged: {error}") from None
        if not damaged:
            return
        lost: dict[str, int] = {}
        for chunk in damaged:
            for channel, count in chunk.messages.items():
                topic = channels.get(channel, f"channel {channel}")
                lost[topic] = lost.get(topic, 0) + count
        first = damaged[0]
        start_ns = self._reader.start_time
        where = (f"{len(damaged)} chunk{'s' if len(damaged) > 1 else ''} damaged, the first at "
                 f"bytes {first.offset}-{first.offset + first.length} ({first.problem}; its "
                 f"messages from {(first.start_ns - start_ns) * 1e-9:.1f} to "
                 f"{(first.end_ns - start_ns) * 1e-9:.1f} s into the recording)")
        what = f"{sum(lost.values())} messages (" + ", ".join(
            f"{topic} {count}" for topic, count in sorted(lost.items())) + ")"
        if not accept_damage:
            raise BagError(f"{self.path}: damaged: {where}: {what} cannot be read; "
                           "--accept-damage reads the rest")
        self._reader.close()
        self._reader = self._open_without(mcap, data, damaged)
        self.damage_note = f"{self.path}: damaged: {where}; read without them: lost {what}"

    def _open_without(self, mcap: Path, data: bytes, damaged: list[ChunkDamage]) -> Reader:
        """Open a copy of the bag's MCAP file without its damaged chunks and their message
        indexes, closed with a new summary."""
        kept, at = [], 0
        for chunk in sorted(damaged, key=lambda chunk: chunk.offset):
            kept.append(data[at:chunk.offset])
            at = chunk.offset + chunk.length + chunk.index_length
        kept.append(data[at:])
        records = complete_mcap_records(b"".join(kept))
        scratch = tempfile.TemporaryDirectory(prefix="telesurg-bag-")
        copy_dir = Path(scratch.name) / self.path.name
        copy_dir.mkdir()
        if self.path.is_dir() and (self.path / "metadata.yaml").exists():
            shutil.copy(self.path / "metadata.yaml", copy_dir)
        (copy_dir / mcap.name).write_bytes(records + closed_mcap_end(records))
        if self._scratch is not None:
            self._scratch.cleanup()
        self._scratch = scratch
        try:
            return self._open(copy_dir if self.path.is_dir() else copy_dir / mcap.name)
        except Exception as error:
            raise BagError(f"{self.path}: not readable without its damaged chunks: "
                           f"{_reason(error)}") from None

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc) -> None:
        self._reader.close()
        if self._scratch is not None:
            self._scratch.cleanup()

    def require(self, expected: dict[str, str]) -> None:
        """Raise a BagError naming every expected topic that is missing or of another type."""
        problems = [f"{topic} missing" if topic not in self.topics
                    else f"{topic} is {self.topics[topic].type}, expected {type_name}"
                    for topic, type_name in expected.items()
                    if self.topics.get(topic) is None or self.topics[topic].type != type_name]
        if problems:
            raise BagError(f"{self.path}: not the expected recording: {'; '.join(problems)}")

    def messages(self, topics: Iterable[str] | None = None,
                 start_ns: int | None = None) -> Iterator[tuple[str, int, bytes]]:
        """(topic, receive time ns, CDR bytes) in time order."""
        wanted = set(self.topics) if topics is None else set(topics)
        connections = [c for c in self._reader.connections if c.topic in wanted]
        if not connections:
            return  # rosbags reads every connection when given none
        try:
            for connection, stamp, data in self._reader.messages(connections=connections,
                                                                 start=start_ns):
                yield connection.topic, stamp, bytes(data)
        except BagError:
            raise
        except Exception as error:
            raise BagError(f"{self.path}: corrupt data: {_reason(error)}") from None

    def read_all(self, topics: Iterable[str] | None = None) -> dict[str, list[tuple[int, bytes]]]:
        """Every message of the topics, by topic: [(receive time ns, CDR bytes)]."""
        wanted = list(self.topics) if topics is None else list(topics)
        store: dict[str, list[tuple[int, bytes]]] = {topic: [] for topic in wanted}
        for topic, stamp, data in self.messages(wanted):
            store[topic].append((stamp, data))
        return store


MCAP_MAGIC = b"\x89MCAP0\r\n"
#: A Data End record and a Footer without summary (readers then scan the records), and the
#: closing magic.
MCAP_CLOSED_END = (b"\x0f" + struct.pack("<QI", 4, 0)
                   + b"\x02" + struct.pack("<QQQI", 20, 0, 0, 0) + MCAP_MAGIC)


def complete_mcap_records(data: bytes) -> bytes:
    """The MCAP file data up to the end of its last complete record (opcode, length, body),
    Data End and footer excluded."""
    end = offset = len(MCAP_MAGIC)
    while offset + 9 <= len(data):
        opcode = data[offset]
        (length,) = struct.unpack_from("<Q", data, offset + 1)
        if opcode in (0x0F, 0x02) or offset + 9 + length > len(data):
            break
        offset += 9 + length
        end = offset
    return data[:end]


def closed_mcap_end(records: bytes) -> bytes:
    """What closes MCAP records cut by complete_mcap_records: a Data End record, a summary of
    Chunk Index records when every message is in a chunk with its Message Index records (as
    telesurg's and rosbag2's writers write them), and the footer. With the chunk indexes a
    reader merges the chunks by time; without them it needs the whole file in time order,
    which a recording of several topics is not (each topic's queue is written in turn)."""
    indexes = _mcap_chunk_indexes(records)
    if not indexes:
        return MCAP_CLOSED_END
    data_end = b"\x0f" + struct.pack("<QI", 4, 0)
    # Statistics (counts left to the reader's scan: only the chunk count is filled in).
    statistics = struct.pack("<QHIIIIQQI", 0, 0, 0, 0, 0, len(indexes), 0, 0, 0)
    summary = b"".join(indexes) + b"\x0b" + struct.pack("<Q", len(statistics)) + statistics
    summary_start = len(records) + len(data_end)
    return (data_end + summary + b"\x02" + struct.pack("<QQQI", 20, summary_start, 0, 0)
            + MCAP_MAGIC)


def _mcap_chunk_indexes(records: bytes) -> list[bytes]:
    """Chunk Index records for the chunks of MCAP records; empty if a message is outside a
    chunk or a chunk has no Message Index records after it (readers skip such chunks)."""
    chunks: list[list] = []
    offset = len(MCAP_MAGIC)
    follows_chunk = False
    while offset + 9 <= len(records):
        opcode = records[offset]
        (length,) = struct.unpack_from("<Q", records, offset + 1)
        body = offset + 9
        if opcode == 0x05:
            return []
        if opcode == 0x06:
            start, end, uncompressed, _ = struct.unpack_from("<QQQI", records, body)
            (name_length,) = struct.unpack_from("<I", records, body + 28)
            compression = records[body + 32:body + 32 + name_length]
            (compressed,) = struct.unpack_from("<Q", records, body + 32 + name_length)
            chunks.append([start, end, offset, 9 + length, {}, 0, compression, compressed,
                           uncompressed])
            follows_chunk = True
        elif opcode == 0x07 and follows_chunk:
            (channel,) = struct.unpack_from("<H", records, body)
            chunks[-1][4][channel] = offset
            chunks[-1][5] += 9 + length
        else:
            follows_chunk = False
        offset = body + length
    indexes = []
    for start, end, at, size, index_offsets, index_length, compression, compressed, \
            uncompressed in chunks:
        if not index_offsets:
            return []
        offsets = b"".join(struct.pack("<HQ", c, o) for c, o in index_offsets.items())
        body = (struct.pack("<QQQQI", start, end, at, size, len(offsets)) + offsets
                + struct.pack("<QI", index_length, len(compression)) + compression
                + struct.pack("<QQ", compressed, uncompressed))
        indexes.append(b"\x08" + struct.pack("<Q", len(body)) + body)
    return indexes


def _reason(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def make_qos(history: int, depth: int, reliability: int, durability: int,
             liveliness: int = 1) -> Qos:
    """A rosbags QoS profile from the integer policy values ROS uses (as rclpy's enums)."""
    never = QosTime(0, 0)  # deadline, lifespan and lease: the middleware's default
    return Qos(QosHistory(history), depth, QosReliability(reliability),
               QosDurability(durability), never, never, QosLiveliness(liveliness), never, False)

