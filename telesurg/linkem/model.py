"""Network link emulation for telesurgery: what one link does to each datagram, as a pure model.

`tc netem` is not available on our machines, so a UDP relay per link runs every datagram through
LinkModel.schedule(), which answers when (if ever) the datagram arrives: propagation delay,
jitter, independent and bursty (Gilbert-Elliott) loss, duplication, bounded reordering, a
bandwidth-limited queue and scheduled outages. Pure Python (no rclpy, no sockets).

Jitter is an Ornstein-Uhlenbeck process in time rather than independent per datagram: on a real
FIFO path the delay varies through queue occupancy and radio scheduling, which change slowly
compared with a 1 ms packet period. Consecutive datagrams therefore see similar delays, so
keeping them in order (see LinkModel) barely disturbs the configured mean and spread.

One random.Random per link: at 1-2 kHz a per-call numpy generator costs more than the model.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

ALL_LINKS = "all"  # the LINK of an outage that takes every link down at once
# An overtaking datagram arrives this much before the one it overtakes: an adjacent swap.
OVERTAKE_LEAD_S = 1e-6


def _check_interval(owner: str, name: str, value: float, low: float, high: float,
                    low_open: bool = False) -> None:
    """ValueError naming owner.name and the valid interval unless value lies in it."""
    above_low = value > low if low_open else value >= low
    if not (above_low and value <= high and math.isfinite(value)):
        interval = (f"{'(' if low_open else '['}{low:g}, {high:g}"
                    f"{')' if math.isinf(high) else ']'}")
        raise ValueError(f"{owner}.{name} must be in {interval}, got {value!r}")


@dataclass(frozen=True)
class GilbertElliott:
    """Bursty loss: a good and a bad state, switched per datagram; losses happen in bad."""

    good_to_bad: float  # probability per datagram of entering the bad state
    bad_to_good: float  # probability per datagram of leaving it: mean bad run 1/bad_to_good
    bad_loss: float = 1.0  # probability of losing a datagram while in the bad state

    def __post_init__(self):
        _check_interval("GilbertElliott", "good_to_bad", self.good_to_bad, 0.0, 1.0)
        # Zero would make the bad state absorbing: the link would die for good.
        _check_interval("GilbertElliott", "bad_to_good", self.bad_to_good, 0.0, 1.0,
                        low_open=True)
        _check_interval("GilbertElliott", "bad_loss", self.bad_loss, 0.0, 1.0)

    @property
    def loss_fraction(self) -> float:
        """Long-run fraction lost: stationary probability of the bad state x its loss."""
        return self.good_to_bad / (self.good_to_bad + self.bad_to_good) * self.bad_loss


@dataclass(frozen=True)
class LinkProfile:
    """What one link does to datagrams. Percentages are of datagrams, in [0, 100]."""

    delay_ms: float = 0.0  # one-way propagation delay
    jitter_ms: float = 0.0  # standard deviation of the delay around delay_ms
    jitter_correlation_ms: float = 100.0  # time constant of the delay variation
    loss_pct: float = 0.0  # independent random loss, in either Gilbert-Elliott state
    burst_loss: GilbertElliott | None = None
    duplicate_pct: float = 0.0  # delivered datagrams that arrive twice
    reorder_pct: float = 0.0  # delivered datagrams that overtake the one sent before them
    bandwidth_mbps: float = 0.0  # serialization rate; 0 = unlimited (no queue)
    queue_limit_bytes: int = 256 * 1024  # bytes waiting for the link beyond which it drops

    def __post_init__(self):
        for name in ("delay_ms", "jitter_ms", "bandwidth_mbps"):
            _check_interval("LinkProfile", name, getattr(self, name), 0.0, math.inf)
        for name in ("jitter_correlation_ms", "queue_limit_bytes"):
            _check_interval("LinkProfile", name, getattr(self, name), 0.0, math.inf,
                            low_open=True)
        for name in ("loss_pct", "duplicate_pct", "reorder_pct"):
            _check_interval("LinkProfile", name, getattr(self, name), 0.0, 100.0)
        if self.burst_loss is not None and not isinstance(self.burst_loss, GilbertElliott):
            raise ValueError(f"LinkProfile.burst_loss must be a GilbertElliott or None, "
                             f"got {self.burst_loss!r}")

    @property
    def expected_loss_pct(self) -> float:
        """Long-run loss on the wire from random and burst loss (no outages, no queue drops)."""
        burst_fraction = self.burst_loss.loss_fraction if self.burst_loss else 0.0
        return 100.0 * (1.0 - (1.0 - self.loss_pct / 100.0) * (1.0 - burst_fraction))


PROFILES: dict[str, LinkProfile] = {
    # Switched gigabit Ethernet: tens of microseconds through a switch, no loss.
    "lan": LinkProfile(delay_ms=0.1, jitter_ms=0.01, bandwidth_mbps=1000.0),
    # Shanghai-Casablanca: 11,050 km great circle; cable routes run ~10% longer (~12,000 km),
    # and light in fiber (index ~1.47) takes ~4.9 us/km: ~60 ms one-way. A leased wavelength
    # has little queueing (jitter well under 1 ms) and backbone-grade loss (1e-4).
    "fiber_transcontinental": LinkProfile(
        delay_ms=60.0, jitter_ms=0.3, loss_pct=0.01, bandwidth_mbps=1000.0),
    # The fiber path plus a 5G access hop (~10 ms one-way through radio and core). Radio
    # scheduling and HARQ retransmissions give several ms of jitter; fades and handovers lose
    # datagrams in bursts: bad runs of 10 datagrams (10 ms at 1 kHz) losing 90%, entered every
    # ~2000 datagrams, give 0.45% burst loss on top of 0.05% random loss: 0.5% in all.
    # Uplink rate of a good 5G cell.
    "cellular_transcontinental": LinkProfile(
        delay_ms=70.0, jitter_ms=4.0, loss_pct=0.05,
        burst_loss=GilbertElliott(good_to_bad=0.0005, bad_to_good=0.1, bad_loss=0.9),
        bandwidth_mbps=50.0),
    # A geostationary satellite hop: 2 x 35,786 km up and down at light speed is ~240 ms, with
    # ground segments ~280 ms one way: beyond what teleoperation tolerates (about 200 ms), so
    # the safety supervisor must pause the arm.
    "geostationary_satellite": LinkProfile(
        delay_ms=280.0, jitter_ms=2.0, loss_pct=0.05, bandwidth_mbps=50.0),
    # An ideal link, for baselines: every datagram arrives at once, in order.
    "perfect": LinkProfile(),
}


@dataclass(frozen=True)
class Outage:
    """A link is down for duration_s from start_s (seconds on the t_send clock)."""

    start_s: float
    duration_s: float

    def __post_init__(self):
        _check_interval("Outage", "start_s", self.start_s, 0.0, math.inf)
        _check_interval("Outage", "duration_s", self.duration_s, 0.0, math.inf, low_open=True)

    def covers(self, t: float) -> bool:
        """Whether the link is down at t: the window is [start_s, start_s + duration_s)."""
        return self.start_s <= t < self.start_s + self.duration_s


_NUMBER = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+))"
_OUTAGE_TEXT = re.compile(rf"([A-Za-z][\w-]*)@{_NUMBER}\+{_NUMBER}")


def parse_outage(text: str) -> tuple[str, Outage]:
    """(link name, Outage) from the CLI form LINK@START+DURATION, e.g. 'a@5+5' or 'all@2+0.5'.

    LINK is a link name or 'all'; START and DURATION are seconds (DURATION > 0).
    """
    match = _OUTAGE_TEXT.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"outage {text!r} is not LINK@START+DURATION with LINK a link name or "
                         f"'{ALL_LINKS}' and START, DURATION seconds (e.g. a@5+5)")
    link, start, duration = match.groups()
    if float(start) < 0.0:
        raise ValueError(f"outage {text!r}: START {start} s is negative (seconds after the "
                         "task starts)")
    if float(duration) <= 0.0:
        raise ValueError(f"outage {text!r}: DURATION {duration} s is not positive")
    return link, Outage(float(start), float(duration))


def outage_timeline(outages, link_names) -> list[tuple[float, str, bool]]:
    """When each link goes down (True) and comes back (False), in time order, for outages given
    as (link name or 'all', Outage). Overlapping outages of one link merge: it comes back when
    the last of them ends. ValueError names an unknown link."""
    changes = []
    for link, outage in outages:
        if link != ALL_LINKS and link not in link_names:
            raise ValueError(f"outage of unknown link {link!r}: the links are "
                             f"{', '.join(link_names)} (or '{ALL_LINKS}')")
        for name in (link_names if link == ALL_LINKS else (link,)):
            changes.append((outage.start_s, 1, name))
            changes.append((outage.start_s + outage.duration_s, -1, name))
    depth = dict.fromkeys(link_names, 0)
    timeline = []
    for t, step, name in sorted(changes, key=lambda c: (c[0], -c[1])):
        depth[name] += step
        if depth[name] == 1 and step == 1 or depth[name] == 0:
            timeline.append((t, name, step == 1))
    return timeline


class LinkModel:
    """Delivery times of the datagrams sent over one emulated link.

    Each datagram, in order: dropped if an outage covers its send time; queued behind the bytes
    still waiting for the link (dropped if they would exceed queue_limit_bytes) and serialized
    at bandwidth_mbps; lost on the wire (Gilbert-Elliott state, then random loss); delayed by
    delay_ms plus the jitter process; possibly duplicated.

    Order: without reordering a datagram is never delivered before an earlier-sent one; a
    delivery time the jitter would put earlier is clamped to the latest delivery so far (the
    head-of-line wait of a FIFO). A datagram picked to overtake (reorder_pct) skips that clamp
    and arrives just before the latest delivery, unless that one had already arrived when it was
    sent. Duplicates arrive together with the original.

    Seeded: the same seed and the same calls give the same delivery times. Send times should
    not decrease between calls.
    """

    def __init__(self, profile: LinkProfile, seed: int, outages: tuple[Outage, ...] = ()):
        self.profile = profile
        self.outages = tuple(outages)
        self._random = random.Random(seed)
        self._delay_s = profile.delay_ms / 1e3
        self._jitter_s = profile.jitter_ms / 1e3
        self._jitter_correlation_s = profile.jitter_correlation_ms / 1e3
        self._loss = profile.loss_pct / 100.0
        self._duplicate = profile.duplicate_pct / 100.0
        self._reorder = profile.reorder_pct / 100.0
        self._bytes_per_s = profile.bandwidth_mbps * 1e6 / 8.0
        self._in_bad_state = False
        self._jitter_offset_s: float | None = None  # the jitter process, drawn on first use
        self._jitter_time = 0.0
        self._link_free_at = -math.inf  # when the serializer has sent everything queued
        self._latest_delivery = -math.inf

    def schedule(self, t_send: float, size_bytes: int) -> list[float]:
        """Delivery times (t_send's clock) of a datagram: [] if lost, two if duplicated."""
        if self.outages and any(outage.covers(t_send) for outage in self.outages):
            return []
        leaves_at = self._serialize(t_send, size_bytes)
        if leaves_at is None or self._lost_on_wire():
            return []
        arrival = leaves_at + max(0.0, self._delay_s + self._jitter(t_send))
        overtake_at = self._latest_delivery - OVERTAKE_LEAD_S
        if self._reorder and leaves_at <= overtake_at and self._random.random() < self._reorder:
            arrival = min(arrival, overtake_at)
        else:
            arrival = max(arrival, self._latest_delivery)
            self._latest_delivery = arrival
        if self._duplicate and self._random.random() < self._duplicate:
            return [arrival, arrival]
        return [arrival]

    def _serialize(self, t_send: float, size_bytes: int) -> float | None:
        """When the datagram's last bit leaves the sender, or None if the queue is full."""
        if not self._bytes_per_s:
            return t_send
        queued_bytes = max(0.0, self._link_free_at - t_send) * self._bytes_per_s
        if queued_bytes + size_bytes > self.profile.queue_limit_bytes:
            return None
        self._link_free_at = max(t_send, self._link_free_at) + size_bytes / self._bytes_per_s
        return self._link_free_at

    def _lost_on_wire(self) -> bool:
        burst = self.profile.burst_loss
        if burst is not None:
            switch = burst.bad_to_good if self._in_bad_state else burst.good_to_bad
            if self._random.random() < switch:
                self._in_bad_state = not self._in_bad_state
            if self._in_bad_state and self._random.random() < burst.bad_loss:
                return True
        return bool(self._loss) and self._random.random() < self._loss

    def _jitter(self, t: float) -> float:
        """The delay variation at t: Ornstein-Uhlenbeck, exact for any gap between sends."""
        if not self._jitter_s:
            return 0.0
        if self._jitter_offset_s is None:
            self._jitter_offset_s = self._random.gauss(0.0, self._jitter_s)
        else:
            kept = math.exp(-max(0.0, t - self._jitter_time) / self._jitter_correlation_s)
            self._jitter_offset_s = (kept * self._jitter_offset_s + self._random.gauss(
                0.0, self._jitter_s * math.sqrt(1.0 - kept * kept)))
        self._jitter_time = t
        return self._jitter_offset_s
