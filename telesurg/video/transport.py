"""Video frames over the bridges' datagrams: fragments with forward error correction, reassembly
against a deadline, and per-link pacing (pure Python over zfec, no rclpy).

An H.264 frame (a few kB, tens of kB for a keyframe) is cut into k equal data blocks, the last
one padded, and zfec (a Reed-Solomon erasure code) adds m parity blocks: any k of the n = k + m
fragments give the frame back. Each fragment fits one bridge datagram, which goes out on every
link; the receiving bridge keeps the first copy, so a fragment is lost only when it is lost on
every link, and parity covers that residual loss without a retransmission round trip.

Fragment layout (big-endian), then the block:

    frame number u32 | capture stamp ns u64 | flags u8 | k u16 | n u16 | block index u16
    | frame length u32 | block size u16

Every fragment repeats the whole header, so any k of them rebuild the frame alone.

The receiver shows a frame as soon as any k of its fragments are in, and never shows one late:
once a frame is delivered, older frames are dropped, and a frame not complete within its
deadline is dropped too. H.264 frames refer to earlier ones, so after any gap the decoder needs a
keyframe: FrameAssembler.wants_keyframe says when to ask the sender for one.

Frame numbers are compared modulo 2**32 (serial number arithmetic, RFC 1982), so they may wrap
(after 2.3 years at 60 frames per second). A sender should start at a random number
(first_frame_number): the receiver takes a frame far behind the newest it delivered for a
restarted sender, whereas a restart counting from 0 again would look like stragglers for as
many frames as the old sender had sent, up to FrameAssembler's restart_frames.
"""

from __future__ import annotations

import math
import random
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

import zfec

#: Room left for the bridge's own DATA framing within its 1200-byte datagrams.
DEFAULT_PAYLOAD_BYTES = 1100
#: zfec's limit on the blocks of one frame (data and parity): GF(2**8) Reed-Solomon.
MAX_BLOCKS = 256
KEYFRAME = 0x01

_HEADER = struct.Struct("!IQBHHHIH")
HEADER_BYTES = _HEADER.size
_FRAME_NUMBERS = 1 << 32
_HALF = 1 << 31
_MAX_BLOCK_BYTES = (1 << 16) - 1  # the header's u16 block size


def _delta(a: int, b: int) -> int:
    """How many frames a comes after b (negative: before), modulo 2**32."""
    return (a - b + _HALF) % _FRAME_NUMBERS - _HALF


def first_frame_number() -> int:
    """A random starting frame number: a restarted sender then does not look like stragglers."""
    return random.SystemRandom().getrandbits(32)


class FragmentHeader(NamedTuple):
    frame_number: int
    stamp_ns: int  # the camera's capture stamp, carried through for latency measurement
    keyframe: bool
    k: int  # data blocks
    n: int  # data and parity blocks
    index: int  # this fragment's block: data below k, parity from k on
    frame_bytes: int  # the frame's length, without the last block's padding
    block_bytes: int

    def pack(self) -> bytes:
        return _HEADER.pack(self.frame_number, self.stamp_ns, KEYFRAME if self.keyframe else 0,
                            self.k, self.n, self.index, self.frame_bytes, self.block_bytes)

    @classmethod
    def unpack(cls, fragment: bytes) -> FragmentHeader:
        """The header of fragment, checked against itself and the fragment's length; raises
        ValueError if they do not add up (a zfec call on them could fail or never return)."""
        if len(fragment) < _HEADER.size:
            raise ValueError(f"fragment of {len(fragment)} bytes is shorter than its header")
        number, stamp_ns, flags, k, n, index, frame_bytes, block_bytes = (
            _HEADER.unpack_from(fragment))
        if flags & ~KEYFRAME:
            raise ValueError(f"unknown fragment flags {flags:#04x}")
        if not 1 <= k <= n <= MAX_BLOCKS:
            raise ValueError(f"fragment blocks k={k} n={n}: need 1 <= k <= n <= {MAX_BLOCKS}")
        if index >= n:
            raise ValueError(f"fragment block index {index} is not below n={n}")
        if block_bytes == 0 or frame_bytes > k * block_bytes:
            raise ValueError(f"a frame of {frame_bytes} bytes does not fit {k} blocks of "
                             f"{block_bytes} bytes")
        if len(fragment) != _HEADER.size + block_bytes:
            raise ValueError(f"fragment of {len(fragment)} bytes, expected {_HEADER.size} + "
                             f"{block_bytes}")
        return cls(number, stamp_ns, flags == KEYFRAME, k, n, index, frame_bytes, block_bytes)


def data_blocks(frame_bytes: int, payload_bytes: int = DEFAULT_PAYLOAD_BYTES) -> int:
    """How many data blocks (k) fragment_frame cuts a frame of frame_bytes into: at least 1."""
    block_room = min(payload_bytes - _HEADER.size, _MAX_BLOCK_BYTES)
    if block_room < 1:
        raise ValueError(f"payload of {payload_bytes} bytes leaves no room after the "
                         f"{_HEADER.size}-byte fragment header")
    return max(1, -(-frame_bytes // block_room))


def fragment_frame(frame_number: int, stamp_ns: int, data: bytes, keyframe: bool, *, parity: int,
                   payload_bytes: int = DEFAULT_PAYLOAD_BYTES) -> list[bytes]:
    """The frame's k data fragments, then its parity fragments, each at most payload_bytes.

    k is data_blocks(len(data), payload_bytes); parity is how many parity blocks to add (see
    parity_blocks), with k + parity <= MAX_BLOCKS. Blocks are as equal as k allows, so a frame
    just over one block's room is not sent as a full block and a mostly empty one."""
    k = data_blocks(len(data), payload_bytes)
    if parity < 0 or k + parity > MAX_BLOCKS:
        raise ValueError(f"a frame of {len(data)} bytes in {payload_bytes}-byte payloads takes "
                         f"{k} data blocks: parity must be 0 to {MAX_BLOCKS - k}, not {parity}")
    block_bytes = max(1, -(-len(data) // k))
    padded = bytes(data) + bytes(k * block_bytes - len(data))
    blocks = tuple(padded[i * block_bytes:(i + 1) * block_bytes] for i in range(k))
    if parity:
        blocks += tuple(zfec.Encoder(k, k + parity).encode(blocks, tuple(range(k, k + parity))))
    number, flags = frame_number % _FRAME_NUMBERS, KEYFRAME if keyframe else 0
    return [_HEADER.pack(number, stamp_ns, flags, k, k + parity, index, len(data), block_bytes)
            + bytes(block) for index, block in enumerate(blocks)]


@lru_cache(maxsize=1024)  # the sender asks for every frame; loss estimates change more slowly
def parity_blocks(k: int, loss_rate: float, frame_loss_target: float = 1e-3,
                  minimum: int = 1) -> int:
    """The fewest parity blocks m for which a frame of k data blocks is lost with probability
    at most frame_loss_target, each of its k + m fragments being lost independently with
    probability loss_rate (lost: more than m of them are); at least minimum, so that an
    underestimated loss rate still leaves some cover, and at most min(k, MAX_BLOCKS - k): no
    more than doubling the frame's bytes (a loss that needs more is better met by a lower
    bitrate)."""
    if not 1 <= k <= MAX_BLOCKS:
        raise ValueError(f"k={k} data blocks: need 1 to {MAX_BLOCKS}")
    if not 0.0 <= loss_rate <= 1.0 or not 0.0 < frame_loss_target <= 1.0:
        raise ValueError(f"loss rate {loss_rate} and frame loss target {frame_loss_target} must "
                         f"be probabilities (the target above 0)")
    cap = min(k, MAX_BLOCKS - k)
    parity = 0
    while parity < cap and frame_loss_probability(k, parity, loss_rate) > frame_loss_target:
        parity += 1
    return min(max(parity, minimum), cap)


def frame_loss_probability(k: int, parity: int, loss_rate: float) -> float:
    """P(more than parity of the k + parity fragments are lost), losses independent."""
    n = k + parity
    return math.fsum(math.comb(n, lost) * loss_rate**lost * (1.0 - loss_rate)**(n - lost)
                     for lost in range(parity + 1, n + 1))


@dataclass(frozen=True, slots=True)
class Frame:
    number: int
    stamp_ns: int
    keyframe: bool
    data: bytes
    recovered: bool = False  # a data block was missing: rebuilt from parity


@dataclass(slots=True)
class AssemblyCounters:
    frames_delivered: int = 0
    frames_recovered: int = 0  # delivered thanks to parity (also in frames_delivered)
    incomplete_dropped: int = 0  # a newer frame completed first, or too many in flight
    expired: int = 0  # incomplete at the deadline
    late_dropped: int = 0  # first fragment came after a newer frame was delivered
    duplicates: int = 0  # a block already held
    malformed: int = 0  # not a fragment, or disagreeing with the frame's earlier fragments
    restarts: int = 0  # the sender started over (a frame far behind the newest)


@dataclass(slots=True)
class _Partial:
    header: FragmentHeader  # the first fragment's: every other one must agree with it
    first_ns: int
    blocks: dict[int, bytes] = field(default_factory=dict)

    def agrees(self, other: FragmentHeader) -> bool:
        mine = self.header
        return (mine.stamp_ns, mine.keyframe, mine.k, mine.n, mine.frame_bytes,
                mine.block_bytes) == (other.stamp_ns, other.keyframe, other.k, other.n,
                                      other.frame_bytes, other.block_bytes)


class FrameAssembler:
    """Rebuilds frames from fragments in any order, delivering each frame once, in order, and
    only while it is newer than every frame delivered before.

    Decode a delivered frame only if it is a keyframe or wants_keyframe is false (read it after
    add): otherwise it refers to a frame the decoder never had."""

    #: Frames dropped or delivered, remembered so that their later fragments are ignored.
    _CLOSED_FRAMES = 256

    def __init__(self, deadline_ns: int, max_pending: int = 8,
                 restart_frames: int = 1024) -> None:
        """deadline_ns: how long after its first fragment a frame may complete.
        max_pending: incomplete frames held at most (the oldest is dropped beyond).
        restart_frames: a frame further behind the newest delivered means a new sender."""
        if deadline_ns <= 0 or max_pending < 1 or restart_frames < 1:
            raise ValueError("deadline_ns, max_pending and restart_frames must be positive")
        self.deadline_ns = deadline_ns
        self.max_pending = max_pending
        self.restart_frames = restart_frames
        self.counters = AssemblyCounters()
        self._pending: dict[int, _Partial] = {}
        self._closed: OrderedDict[int, None] = OrderedDict()
        self._newest: int | None = None  # newest frame number delivered
        self._wants_keyframe = True  # a decoder cannot start from a frame between keyframes

    @property
    def wants_keyframe(self) -> bool:
        """Whether the decoder needs a keyframe: from the start, and from the moment a frame
        is lost (expired, abandoned, or skipped by the frame delivered) until a keyframe is
        delivered."""
        return self._wants_keyframe

    @property
    def frames_in_flight(self) -> int:
        return len(self._pending)

    def add(self, fragment: bytes, now_ns: int) -> list[Frame]:
        """The frame fragment completes, if any (expiring overdue frames first). Never raises
        on a bad fragment: it is counted as malformed and ignored."""
        self.expire(now_ns)
        try:
            header = FragmentHeader.unpack(fragment)
        except ValueError:
            self.counters.malformed += 1
            return []
        number = header.frame_number
        if number in self._closed:
            return []  # the parity nobody needed, or what remains of a dropped frame
        if self._newest is not None:
            behind = _delta(self._newest, number)
            if behind > self.restart_frames:
                self._restart()
            elif behind >= 0:
                # No keyframe request: delivering the newer frame flagged the gap already.
                self.counters.late_dropped += 1
                self._close(number)
                return []
        partial = self._pending.get(number)
        if partial is None:
            partial = self._pending[number] = _Partial(header, now_ns)
            if len(self._pending) > self.max_pending:
                oldest = min(self._pending, key=lambda pending: _delta(pending, number))
                self._abandon(oldest)
                if oldest == number:
                    return []
        elif not partial.agrees(header):
            self.counters.malformed += 1
            return []
        if header.index in partial.blocks:
            self.counters.duplicates += 1
            return []
        partial.blocks[header.index] = fragment[_HEADER.size:]
        if len(partial.blocks) < header.k:
            return []
        return [self._deliver(number, partial)]

    def expire(self, now_ns: int) -> int:
        """Drops the incomplete frames whose first fragment came more than deadline_ns before
        now_ns; returns how many."""
        if not self._pending:
            return 0
        overdue = [number for number, partial in self._pending.items()
                   if now_ns - partial.first_ns > self.deadline_ns]
        for number in overdue:
            del self._pending[number]
            self.counters.expired += 1
            self._drop(number)
        return len(overdue)

    def _deliver(self, number: int, partial: _Partial) -> Frame:
        del self._pending[number]
        header, blocks = partial.header, partial.blocks
        recovered = any(index not in blocks for index in range(header.k))
        if recovered:
            # Distinct indices only: zfec never returns from a decode given one twice.
            indices = tuple(sorted(blocks)[:header.k])
            primary = zfec.Decoder(header.k, header.n).decode(
                tuple(blocks[index] for index in indices), indices)
        else:
            primary = [blocks[index] for index in range(header.k)]
        data = b"".join(primary)[:header.frame_bytes]
        for older in [pending for pending in self._pending if _delta(pending, number) < 0]:
            self._abandon(older)
        if header.keyframe:
            self._wants_keyframe = False
        elif self._newest is None or _delta(number, self._newest) != 1:
            self._wants_keyframe = True  # a frame in between never came
        self._newest = number
        self._close(number)
        self.counters.frames_delivered += 1
        self.counters.frames_recovered += recovered
        return Frame(number, header.stamp_ns, header.keyframe, data, recovered)

    def _abandon(self, number: int) -> None:
        del self._pending[number]
        self.counters.incomplete_dropped += 1
        self._drop(number)

    def _drop(self, number: int) -> None:
        self._wants_keyframe = True
        self._close(number)

    def _close(self, number: int) -> None:
        self._closed[number] = None
        if len(self._closed) > self._CLOSED_FRAMES:
            self._closed.popitem(last=False)

    def _restart(self) -> None:
        for number in list(self._pending):
            self._abandon(number)
        self._closed.clear()
        self._newest = None
        self._wants_keyframe = True
        self.counters.restarts += 1


class Pacer:
    """Token bucket capping one link's bytes: rate_bytes_per_s on average, burst_bytes at once.

    take() always succeeds and may leave a debt (a fragment that had to go anyway): later sizes
    wait until it is paid, so the average stays at the rate."""

    def __init__(self, rate_bytes_per_s: float, burst_bytes: int) -> None:
        if rate_bytes_per_s <= 0 or burst_bytes <= 0:
            raise ValueError("rate_bytes_per_s and burst_bytes must be positive")
        self._rate_per_ns = rate_bytes_per_s * 1e-9
        self._burst = float(burst_bytes)
        self._tokens = float(burst_bytes)
        self._last_ns: int | None = None

    def ready(self, size: int, now_ns: int) -> bool:
        return self.wait_ns(size, now_ns) == 0

    def wait_ns(self, size: int, now_ns: int) -> int:
        """How long from now_ns until size bytes may go (0: now)."""
        self._refill(size, now_ns)
        missing = size - self._tokens
        return 0 if missing <= 1e-6 else math.ceil(missing / self._rate_per_ns)

    def take(self, size: int, now_ns: int) -> None:
        self._refill(size, now_ns)
        self._tokens -= size

    def _refill(self, size: int, now_ns: int) -> None:
        if size > self._burst:
            raise ValueError(f"{size} bytes never fit a burst of {self._burst:.0f} bytes")
        if self._last_ns is not None and now_ns > self._last_ns:
            self._tokens = min(self._burst,
                               self._tokens + (now_ns - self._last_ns) * self._rate_per_ns)
        if self._last_ns is None or now_ns > self._last_ns:
            self._last_ns = now_ns
