"""Datagram format between the master-site and patient-site bridges (pure Python, no rclpy).

The bridges send every datagram on every link (IEC 62439-3 PRP style); the receiver keeps the
first copy of each sequence number and drops the others, so losing one link loses nothing.

Datagram layout (big-endian), at most MAX_DATAGRAM_BYTES so no path has to fragment it:

    version u8 | kind u8 | link id u8 | sender id u64 | sequence u64 | timestamp ns u64
    | topic index u16 | ChaCha20-Poly1305 ciphertext of the payload | 16-byte tag

Everything is authenticated: the header is the AEAD associated data and the payload is encrypted.
The link id is authenticated too, although it does not change what is published: the bridge uses
it for per-link statistics (which link delivers first, which one is lossy), and an attacker on one
link must not be able to make copies look as if they came from the other.

Nonces. A ChaCha20-Poly1305 nonce must never repeat under a key: a repeat exposes the XOR of two
plaintexts and the one-time Poly1305 key, which allows forgeries. The 96-bit nonce cannot hold a
64-bit sender id, a 64-bit sequence and a link id. A 32-bit sender id would make them fit, but
sender ids are random and sequences restart at 0 at every bridge start, so after about 2**16
starts under one pre-shared key two starts would likely share an id and reuse every nonce. So
each sender encrypts under its own subkey, HKDF-SHA256(pre-shared key, info=sender id), with the
nonce (link id, sequence): a sender sends each sequence once per link, and WireCodec.encode
refuses to repeat a (link id, sequence) pair. Subkeys collide only if two 64-bit random ids do
(about 2**32 starts). Each link gets its own encryption rather than one ciphertext shared by
both links: sharing would need the link id outside the authenticated part, and the second
encryption of a small payload costs about a microsecond.

Sender restarts. A bridge picks a random 64-bit sender id at each start, so a restarted bridge is
a new sender with a new subkey, a new nonce space and, at the receiver, a new AntiReplayWindow.
Reusing an id with sequences starting over would reuse nonces and have the old window drop the
new datagrams; WireCodec therefore draws the id itself unless a test passes one.

Replay. Per sender, AntiReplayWindow drops the second PRP copy and any replayed datagram. It cannot
tell a recording of an earlier session (another sender id, so a fresh window) from a restarted
peer: the bridge checks freshness before trusting a new sender id (a heartbeat challenge, see
telesurg.bridge.core).
"""

from __future__ import annotations

import os
import re
import stat
import struct
import tempfile
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PROTOCOL_VERSION = 2  # 2: DATA payloads carry the previous DATA message (see pack_data)
# QUIC's floor: fits the MTU of cellular and VPN paths, so no IP fragmentation.
MAX_DATAGRAM_BYTES = 1200
KEY_BYTES = 32
DEFAULT_REPLAY_WINDOW = 1024  # about 1 s of reordering at 1 kHz

_HEADER = struct.Struct("!BBBQQQH")
_NONCE = struct.Struct("!B3xQ")  # link id, sequence: 12 bytes
_TAG_BYTES = 16
_MAX_PAYLOAD_BYTES = MAX_DATAGRAM_BYTES - _HEADER.size - _TAG_BYTES
_SUBKEY_INFO = b"telesurg wire v1 sender key"
# Subkeys of authentic senders kept by a receiver; only a restart of the peer adds one.
_MAX_CACHED_SENDERS = 8
_KEY_FILE_PATTERN = re.compile(rb"[0-9a-fA-F]{64}\n?")


class MessageKind(IntEnum):
    DATA = 1
    HEARTBEAT = 2
    HEARTBEAT_REPLY = 3
    VIDEO = 4  # one fragment of a video frame (telesurg.video.transport)


_KINDS = frozenset(MessageKind)
#: The kinds that carry a topic's messages (the others, topic index 0).
_TOPIC_KINDS = frozenset({MessageKind.DATA, MessageKind.VIDEO})


def max_payload_bytes() -> int:
    """Largest payload whose datagram fits in MAX_DATAGRAM_BYTES."""
    return _MAX_PAYLOAD_BYTES


#: A DATA payload: the length of the message's CDR (u16), the CDR, then, if it fits, the
#: sender's previous DATA message: its sequence (u64), topic index (u16) and CDR. As in RTP's
#: redundant encoding (RFC 2198), a message lost on every link is recovered from the next
#: datagram: with one link down, one random loss on the other no longer loses a command.
_DATA_HEAD = struct.Struct("!H")
_PREVIOUS = struct.Struct("!QH")


def max_message_bytes() -> int:
    """Largest message (CDR bytes) that one DATA datagram carries."""
    return _MAX_PAYLOAD_BYTES - _DATA_HEAD.size


def pack_data(message: bytes, previous: tuple[int, int, bytes] | None) -> bytes:
    """The DATA payload for message, with previous = (sequence, topic index, CDR) if it fits."""
    packed = _DATA_HEAD.pack(len(message)) + message
    if previous is not None:
        sequence, topic_index, cdr = previous
        if len(packed) + _PREVIOUS.size + len(cdr) <= _MAX_PAYLOAD_BYTES:
            packed += _PREVIOUS.pack(sequence, topic_index) + cdr
    return packed


def unpack_data(payload: bytes) -> tuple[bytes, tuple[int, int, bytes] | None]:
    """(message CDR, previous (sequence, topic index, CDR) or None) from a DATA payload."""
    if len(payload) < _DATA_HEAD.size:
        raise MalformedData
    end = _DATA_HEAD.size + _DATA_HEAD.unpack_from(payload)[0]
    if end > len(payload) or 0 < len(payload) - end < _PREVIOUS.size:
        raise MalformedData
    if end == len(payload):
        return payload[_DATA_HEAD.size:], None
    sequence, topic_index = _PREVIOUS.unpack_from(payload, end)
    return payload[_DATA_HEAD.size:end], (sequence, topic_index,
                                          payload[end + _PREVIOUS.size:])


@dataclass(frozen=True, slots=True)
class Datagram:
    kind: MessageKind
    link_id: int
    sender_id: int
    sequence: int
    timestamp_ns: int
    topic_index: int  # 0 for heartbeats
    payload: bytes


class DatagramTooLarge(ValueError):
    """The payload would not fit in one datagram."""


class SequenceReuse(ValueError):
    """Encoding the same (link id, sequence) twice would reuse a nonce."""


class KeyFileError(ValueError):
    """The key file is missing, malformed or readable by others."""


class WireError(Exception):
    """A received datagram is invalid; `reason` names why, for DropCounters."""

    reason = "invalid"

    def __init__(self) -> None:
        super().__init__(self.reason)


class TruncatedDatagram(WireError):
    reason = "truncated"


class OversizedDatagram(WireError):
    reason = "oversized"


class BadVersion(WireError):
    reason = "bad version"


class UnknownKind(WireError):
    reason = "unknown kind"


class ReflectedDatagram(WireError):
    """Our own datagram sent back to us: authentic, but not from the peer."""

    reason = "reflected"


class AuthenticationFailed(WireError):
    reason = "authentication failed"


class MalformedData(WireError):
    """An authentic DATA payload whose lengths do not add up: a peer out of step with us."""

    reason = "malformed data"


class Header(NamedTuple):
    """A datagram's header, as sent (authenticated only once the datagram is)."""

    version: int
    kind: int
    link_id: int
    sender_id: int
    sequence: int
    timestamp_ns: int
    topic_index: int


def new_sender_id() -> int:
    return int.from_bytes(os.urandom(8), "big")


def _sender_cipher(key: bytes, sender_id: int) -> ChaCha20Poly1305:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=_SUBKEY_INFO + sender_id.to_bytes(8, "big"))
    return ChaCha20Poly1305(hkdf.derive(key))


class WireCodec:
    """Encodes this bridge's datagrams and decodes (authenticates) the peer's."""

    def __init__(self, key: bytes, sender_id: int | None = None) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"key must be {KEY_BYTES} bytes, got {len(key)}")
        self._key = bytes(key)
        self.sender_id = new_sender_id() if sender_id is None else sender_id
        self._cipher = _sender_cipher(self._key, self.sender_id)
        self._last_sequence_by_link: dict[int, int] = {}
        self._peer_ciphers: dict[int, ChaCha20Poly1305] = {}

    def encode(self, kind: MessageKind, link_id: int, sequence: int, timestamp_ns: int,
               topic_index: int, payload: bytes) -> bytes:
        if len(payload) > _MAX_PAYLOAD_BYTES:
            raise DatagramTooLarge(
                f"payload of {len(payload)} bytes exceeds the {_MAX_PAYLOAD_BYTES} bytes that "
                f"fit in a {MAX_DATAGRAM_BYTES}-byte datagram")
        if kind not in _KINDS:
            raise ValueError(f"unknown message kind {kind}")
        if kind not in _TOPIC_KINDS and topic_index != 0:
            raise ValueError(f"{MessageKind(kind).name} must have topic index 0")
        if sequence <= self._last_sequence_by_link.get(link_id, -1):
            raise SequenceReuse(f"sequence {sequence} on link {link_id} is not above the last "
                                "one sent there; its nonce may already be used")
        try:
            header = _HEADER.pack(PROTOCOL_VERSION, kind, link_id, self.sender_id, sequence,
                                  timestamp_ns, topic_index)
        except struct.error as error:
            raise ValueError(f"header field out of range: {error}") from None
        self._last_sequence_by_link[link_id] = sequence
        return header + self._cipher.encrypt(_NONCE.pack(link_id, sequence), payload, header)

    def decode(self, datagram: bytes) -> Datagram:
        """The authenticated content of `datagram`; raises a WireError if it is invalid."""
        return self.authenticate(datagram, self.header(datagram))

    def header(self, datagram: bytes) -> Header:
        """The datagram's header, checked for what needs no key (size, version, kind, not our
        own): the cheap first look a receiver takes before spending a decryption on it."""
        if len(datagram) < _HEADER.size + _TAG_BYTES:
            raise TruncatedDatagram
        if len(datagram) > MAX_DATAGRAM_BYTES:
            raise OversizedDatagram
        header = Header(*_HEADER.unpack_from(datagram))
        if header.version != PROTOCOL_VERSION:
            raise BadVersion
        if header.kind not in _KINDS:
            raise UnknownKind
        if header.sender_id == self.sender_id:
            raise ReflectedDatagram
        return header

    def knows(self, sender_id: int) -> bool:
        """Whether a datagram of sender_id authenticates without a key derivation (about
        20 us, against 3 us to check one datagram)."""
        return sender_id in self._peer_ciphers

    def authenticate(self, datagram: bytes, header: Header) -> Datagram:
        """The authenticated content of a datagram whose header() is header."""
        _, kind, link_id, sender_id, sequence, timestamp_ns, topic_index = header
        cipher = self._peer_ciphers.get(sender_id)
        authentic_sender = cipher is not None
        if not authentic_sender:
            cipher = _sender_cipher(self._key, sender_id)
        header = datagram[:_HEADER.size]
        try:
            payload = cipher.decrypt(_NONCE.pack(link_id, sequence), datagram[_HEADER.size:],
                                     header)
        except InvalidTag:
            raise AuthenticationFailed from None
        if not authentic_sender:
            # Cached only once authentic, so forged sender ids cannot evict the peer's subkey.
            if len(self._peer_ciphers) >= _MAX_CACHED_SENDERS:
                del self._peer_ciphers[next(iter(self._peer_ciphers))]
            self._peer_ciphers[sender_id] = cipher
        return Datagram(MessageKind(kind), link_id, sender_id, sequence, timestamp_ns,
                        topic_index, payload)


class AntiReplayWindow:
    """Accepts each sequence number of one sender at most once (duplicate copies, replays).

    Accepts every never-seen sequence above (highest accepted - width), in any order; the first
    datagram from a sender is accepted whatever its sequence. Older ones are dropped as too old:
    width must cover the worst reordering between the links.
    """

    def __init__(self, width: int = DEFAULT_REPLAY_WINDOW) -> None:
        if width < 1:
            raise ValueError(f"window width must be positive, got {width}")
        self.width = width
        self.duplicates = 0
        self.too_old = 0
        self._highest: int | None = None
        self._seen = 0  # bit i set: sequence (highest - i) was accepted
        self._all_bits = (1 << width) - 1

    def is_new(self, sequence: int) -> bool:
        """Whether accept(sequence) would accept it (nothing changes)."""
        highest = self._highest
        if highest is None or sequence > highest:
            return True
        offset = highest - sequence
        return offset < self.width and not self._seen & (1 << offset)

    def accept(self, sequence: int) -> bool:
        highest = self._highest
        if highest is None or sequence > highest:
            shift = self.width if highest is None else sequence - highest
            # A big jump must not build a huge integer: the whole window is then new.
            self._seen = ((self._seen << shift) | 1) & self._all_bits if shift < self.width else 1
            self._highest = sequence
            return True
        offset = highest - sequence
        if offset >= self.width:
            self.too_old += 1
            return False
        bit = 1 << offset
        if self._seen & bit:
            self.duplicates += 1
            return False
        self._seen |= bit
        return True


class DropCounters:
    """Rejected datagrams per reason, for the bridge's diagnostics, and their rate: a flood."""

    #: A rate of rejected datagrams reported as a flood: a genuine peer is rejected now and
    #: then (a reordered copy too old), never hundreds of times a second.
    FLOOD_PER_S = 100.0

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._samples: deque[tuple[float, int]] = deque()  # (time s, total), the last second

    def record(self, reason: str) -> None:
        self._counts[reason] = self._counts.get(reason, 0) + 1

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)

    def per_second(self, now: float) -> float:
        """Rejected datagrams per second over about the last second (call it periodically)."""
        total = self.total
        self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[1][0] >= 1.0:
            self._samples.popleft()
        then, before = self._samples[0]
        return (total - before) / (now - then) if now > then else 0.0


def write_key(path: str | Path, key: bytes | None = None) -> bytes:
    """Atomically write `key` (default: a new random one) as a mode-0600 key file; returns it."""
    key = os.urandom(KEY_BYTES) if key is None else key
    if len(key) != KEY_BYTES:
        raise ValueError(f"key must be {KEY_BYTES} bytes, got {len(key)}")
    path = Path(path)
    # mkstemp creates the file with mode 0600, so the key is never readable by others.
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(key.hex() + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return key


def load_key(path: str | Path) -> bytes:
    """The 32-byte key in `path`; refuses a file accessible by group or others, and anything
    but a regular file (opening a FIFO would wait for a writer for ever)."""
    try:
        # Non-blocking: a FIFO opens at once, and is then refused for what it is.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with open(descriptor, "rb") as file:
            status = os.fstat(file.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise KeyFileError(f"key file {path} is not a regular file")
            mode = stat.S_IMODE(status.st_mode)
            if mode & 0o077:
                raise KeyFileError(
                    f"key file {path} has mode {mode:04o}: it must not be accessible by group or "
                    f"others (chmod 600 {path})")
            content = file.read(2 * KEY_BYTES + 2)
    except OSError as error:
        raise KeyFileError(f"cannot read key file {path}: {error.strerror}") from None
    if not _KEY_FILE_PATTERN.fullmatch(content):
        raise KeyFileError(
            f"key file {path} must hold one line of {2 * KEY_BYTES} hex digits "
            f"({KEY_BYTES} bytes)")
    return bytes.fromhex(content.decode("ascii").strip())
