"""The command stream every benchmark sends: numbered payloads the size of a /psm/servo_cp
message, paced at a fixed rate, and the figures of what arrived.

The send time travels in the payload (CLOCK_MONOTONIC, one clock for every process of this
machine), so a receiver in another process measures one-way latency without clock sync.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator

import numpy as np

from telesurg.analysis.metrics import percentiles

#: A geometry_msgs/PoseStamped in CDR with a short frame id is about this long.
PAYLOAD_BYTES = 200
_HEAD = struct.Struct("!QQ")  # sequence number, send time (monotonic ns)


def make_payload(sequence: int, sent_ns: int, size: int = PAYLOAD_BYTES) -> bytes:
    return _HEAD.pack(sequence, sent_ns).ljust(size, b"\0")


def read_payload(data: bytes) -> tuple[int, int]:
    """(sequence, send time ns) of a payload made by make_payload."""
    return _HEAD.unpack_from(data)


def paced(rate_hz: float, duration_s: float) -> Iterator[int]:
    """Sequence numbers 0, 1, ... each yielded at its due time (no drift: a late one does not
    delay the rest), for duration_s."""
    period = 1.0 / rate_hz
    start = time.monotonic()
    for sequence in range(int(rate_hz * duration_s)):
        delay = start + sequence * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield sequence


class StreamStats:
    """What a receiver saw of a stream: latencies, losses, the largest gap between arrivals."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[int, int, int]] = []  # (sequence, sent ns, received ns)

    def add(self, data: bytes, received_ns: int | None = None) -> None:
        sequence, sent_ns = read_payload(data)
        self.arrivals.append((sequence, sent_ns,
                              time.monotonic_ns() if received_ns is None else received_ns))

    def summary(self, sent: int, window_ns: tuple[int, int] | None = None) -> dict:
        """Figures for a stream of `sent` payloads (sequence 0..sent-1): latency in ms
        {p50, p99, max}, lost, duplicates, largest gap between arrivals in ms; with window_ns
        (send times), latency of the payloads sent inside it only (e.g. during an outage)."""
        sequences = [s for s, _, _ in self.arrivals]
        unique = set(sequences)
        latencies = [(r - t) * 1e-6 for _, t, r in self.arrivals
                     if window_ns is None or window_ns[0] <= t <= window_ns[1]]
        received = np.sort(np.array([r for _, _, r in self.arrivals], dtype=np.int64))
        return {
            "sent": sent,
            "delivered": len(unique),
            "lost": sent - len(unique & set(range(sent))),
            "duplicates": len(sequences) - len(unique),
            "latency_ms": percentiles(latencies),
            "largest_gap_ms": round(float(np.diff(received).max()) * 1e-6, 3)
            if received.size > 1 else None,
        }
