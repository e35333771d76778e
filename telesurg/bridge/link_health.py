"""Health of the bridge's network links: per link UP / DEGRADED / DOWN, overall REDUNDANT /
SINGLE / LOST, and the figures behind them (RTT, loss, jitter, reordering, delay variation).

Pure Python (no rclpy, no sockets): time is passed in as float seconds of a monotonic clock.

The bridge feeds each link's LinkMonitor with every authenticated datagram received on that link
(before PRP de-duplication across links) and with the RTT of every heartbeat reply. Then:

- call LinkHealth.update(now) after feeding datagrams, and publish the changes it returns;
- arm a timer for LinkHealth.next_deadline(now) and call update() when it fires: a link goes
  DOWN, and the whole path LOST, exactly link_timeout_ms after the last datagram heard, and
  nothing else can make that happen sooner, so no polling is needed.

Definitions (per link):

- DOWN: no fresh datagram heard for link_timeout_ms (now >= last heard + timeout). A link never
  heard is DOWN. Duplicates and datagrams older than the sequence window prove nothing about the
  link now (they may be replays), so they do not count as heard.
- DEGRADED: not DOWN, and loss %, RTT p99 or jitter above its threshold. It clears only when
  every figure is back at or below recovery_ratio x its threshold, so a figure hovering at a
  threshold does not flap the state.
- UP: neither.

Figures:

- Loss %: sequence numbers missing among the last datagram_window ones up to the highest seen on
  the link (fewer while the window fills). The sender sends every datagram on every link, so a
  link's sequence is contiguous unless datagrams are lost (heartbeats too must go out on every
  link under one sequence number, or each link sees gaps). A late datagram fills its gap; a
  duplicate changes nothing. The window restarts when a link comes back from DOWN: the outage
  is counted in down_events, not as loss, and a restarted peer (sequences from 0 again, after
  far longer than the timeout) is picked up without a separate signal. The first datagram after
  an outage is therefore taken whatever its sequence: only the bridge's freshness check (see
  telesurg.bridge.wire) tells a replay from a restarted peer there.
- RTT: latest, p50 and p99 (linear interpolation) over the last rtt_window heartbeat replies.
- One-way delay: RTT p50 / 2. The two sites' clocks are not synchronised, so sender timestamps
  cannot give it.
- Relative one-way delay: transit time (arrival - sender timestamp, including the unknown clock
  offset) minus the smallest transit of the last datagram_window datagrams, latest and p99. The
  offset cancels, so this is the queueing and radio delay on top of the path's best.
- Jitter: RFC 3550 interarrival jitter, J += (|D| - J) / 16 with D the transit difference of
  consecutive fresh datagrams in arrival order. Not computed across an outage.
- Reordering: fresh datagrams that arrive after a higher sequence on the same link (RFC 4737),
  count and % of fresh datagrams received, since start.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from telesurg.contract.params import Param
from telesurg.contract.states import LinkState, OverallState

# RFC 3550, 6.4.1: the jitter estimate's gain, a noise reduction ratio of 1/16.
_JITTER_GAIN = 1.0 / 16.0
# Bounds memory and per-datagram cost: the sequence window is shifted on every datagram.
_MAX_WINDOW = 100_000


#: The key of the bridge configuration file that gives link_timeout_ms (read by
#: telesurg.bridge.config); declared here so that this pure module takes its default from it.
LINK_TIMEOUT = Param("link_timeout_ms", 50.0,
                     "A link whose peer is silent this long is reported down.", 1.0, 10000.0)


@dataclass(frozen=True)
class LinkHealthConfig:
    link_timeout_ms: float  # silence after which a link is DOWN
    # Datagrams (sequence numbers) behind loss % and relative delay: ~1 s at 1 kHz.
    datagram_window: int = 1000
    rtt_window: int = 100  # heartbeat replies behind the RTT percentiles: 1 s at 100 Hz
    # Thresholds above which a heard link is DEGRADED; math.inf disables one.
    degraded_loss_percent: float = 5.0
    # Above the 120-140 ms RTT of a transcontinental fiber or 5G path (telesurg.linkem.model).
    degraded_rtt_p99_ms: float = 200.0
    degraded_jitter_ms: float = 5.0
    # DEGRADED clears when every figure is at or below this fraction of its threshold.
    recovery_ratio: float = 0.8

    def __post_init__(self) -> None:
        timeout = self.link_timeout_ms
        if not (_is_number(timeout) and 0.0 < timeout < math.inf):
            raise ValueError(f"LinkHealthConfig.link_timeout_ms must be finite and > 0, "
                             f"got {timeout!r}")
        for name in ("degraded_rtt_p99_ms", "degraded_jitter_ms"):
            value = getattr(self, name)
            if not (_is_number(value) and value > 0.0):
                raise ValueError(f"LinkHealthConfig.{name} must be > 0 (inf: never), "
                                 f"got {value!r}")
        loss = self.degraded_loss_percent
        if not (_is_number(loss) and (0.0 <= loss <= 100.0 or loss == math.inf)):
            raise ValueError(f"LinkHealthConfig.degraded_loss_percent must be in [0, 100] "
                             f"(inf: never), got {loss!r}")
        ratio = self.recovery_ratio
        if not (_is_number(ratio) and 0.0 < ratio <= 1.0):
            raise ValueError(f"LinkHealthConfig.recovery_ratio must be in (0, 1], got {ratio!r}")
        for name in ("datagram_window", "rtt_window"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool)
                    and 1 <= value <= _MAX_WINDOW):
                raise ValueError(f"LinkHealthConfig.{name} must be an integer in "
                                 f"[1, {_MAX_WINDOW}], got {value!r}")

    @classmethod
    def defaults(cls) -> LinkHealthConfig:
        """What the bridge runs with when its configuration file does not set link_timeout_ms."""
        return cls(link_timeout_ms=LINK_TIMEOUT.default)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class StateChange:
    link: str | None  # None: the overall state
    previous: LinkState | OverallState
    current: LinkState | OverallState


@dataclass(frozen=True)
class LinkFigures:
    """One link's state and figures at a time. Times in ms; None where nothing measured yet."""

    state: LinkState
    degraded_by: tuple[str, ...]  # of "loss", "rtt", "jitter": figures past their threshold
    last_heard_age_ms: float | None
    rtt_ms: float | None  # latest
    rtt_p50_ms: float | None
    rtt_p99_ms: float | None
    one_way_delay_ms: float | None  # RTT p50 / 2
    relative_delay_ms: float | None  # latest transit above the window's smallest
    relative_delay_p99_ms: float | None
    loss_percent: float
    jitter_ms: float
    received: int  # fresh datagrams (no duplicates, none older than the window)
    bytes_received: int
    duplicates: int
    reordered: int
    reorder_percent: float
    # Below the sequence window (datagram_window behind the highest, or from before it
    # restarted): ignored, as they may be replays.
    too_old: int
    down_events: int


@dataclass(frozen=True)
class HealthSnapshot:
    state: OverallState
    links: dict[str, LinkFigures]


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between closest ranks, as numpy.percentile's default."""
    position = fraction * (len(sorted_values) - 1)
    below = math.floor(position)
    above = min(below + 1, len(sorted_values) - 1)
    weight = position - below
    return sorted_values[below] * (1.0 - weight) + sorted_values[above] * weight


def _seconds_to_ms(seconds: float | None) -> float | None:
    """Seconds in milliseconds; None (not measured yet) stays None."""
    return None if seconds is None else seconds * 1e3


class LinkMonitor:
    """Health of one link from what arrives on it. See the module docstring for definitions."""

    def __init__(self, config: LinkHealthConfig) -> None:
        self.config = config
        self._timeout = config.link_timeout_ms * 1e-3
        self._window = config.datagram_window
        self._window_mask = (1 << config.datagram_window) - 1
        self._state = LinkState.DOWN  # as of the last update()
        self._last_heard = -math.inf
        self.silent_at = -math.inf  # when the link goes DOWN unless a datagram arrives
        # Sequence window: bit i of _received_bits set = sequence (_highest - i) arrived.
        self._highest: int | None = None
        self._first_sequence = 0  # where the window (re)started
        self._received_bits = 0
        # Transit times count sender time from the window's first datagram, so that floats keep
        # nanoseconds even if the sender's clock is a wall clock (~1.8e18 ns).
        self._sender_origin_ns = 0
        self._transits: deque[float] = deque(maxlen=config.datagram_window)
        self._previous_transit: float | None = None
        self._jitter = 0.0
        self._rtts: deque[float] = deque(maxlen=config.rtt_window)
        # Sorted on demand (replies come at ~100 Hz, update() may run at kHz rates).
        self._sorted_rtts: list[float] | None = []  # None: stale
        self._rtt_p99 = 0.0
        self.received = 0
        self.bytes_received = 0
        self.duplicates = 0
        self.reordered = 0
        self.too_old = 0
        self.down_events = 0

    @property
    def state(self) -> LinkState:
        """The state as of the last update()."""
        return self._state

    def on_datagram(self, now: float, sequence: int, sender_timestamp_ns: int, size: int) -> bool:
        """Every authenticated datagram received on this link (data, heartbeat or reply).
        False if it proves nothing about the link now (a duplicate, or older than the window)."""
        highest = self._highest
        if highest is None or now >= self.silent_at:
            if self._state is not LinkState.DOWN:
                self.down_events += 1  # an outage update() was not called in time to see
            self._restart_window(sequence, sender_timestamp_ns)
        elif sequence > highest:
            self._received_bits = ((self._received_bits << (sequence - highest)) | 1
                                   ) & self._window_mask
            self._highest = sequence
        else:
            if highest - sequence >= self._window or sequence < self._first_sequence:
                self.too_old += 1
                return False
            bit = 1 << (highest - sequence)
            if self._received_bits & bit:
                self.duplicates += 1
                return False
            self._received_bits |= bit
            self.reordered += 1
        self._last_heard = now
        self.silent_at = now + self._timeout
        self.received += 1
        self.bytes_received += size
        transit = now - (sender_timestamp_ns - self._sender_origin_ns) * 1e-9
        previous = self._previous_transit
        if previous is not None:
            self._jitter += (abs(transit - previous) - self._jitter) * _JITTER_GAIN
        self._previous_transit = transit
        self._transits.append(transit)
        return True

    def _restart_window(self, sequence: int, sender_timestamp_ns: int) -> None:
        self._highest = self._first_sequence = sequence
        self._received_bits = 1
        # Transits across an outage (or from a restarted peer) are not comparable.
        self._sender_origin_ns = sender_timestamp_ns
        self._transits.clear()
        self._previous_transit = None

    def on_heartbeat_reply(self, now: float, echoed_send_time: float) -> None:
        """A reply to our heartbeat sent at echoed_send_time (same clock as now)."""
        rtt = now - echoed_send_time
        if not rtt >= 0.0:  # a reply from the future (or NaN) can only be a bug: no sample
            return
        self._rtts.append(rtt)
        self._sorted_rtts = None

    def update(self, now: float) -> LinkState:
        """The state at now, remembered for the hysteresis and for state."""
        state, _ = self._evaluate(now)
        if state is LinkState.DOWN and self._state is not LinkState.DOWN:
            self.down_events += 1
        self._state = state
        return state

    def figures(self, now: float) -> LinkFigures:
        """Figures at now, with the state as of the last update(): only the thread that reads
        the link's datagrams (and then calls update) may declare it DOWN, or a report made while
        datagrams wait unread in the socket would call a live link silent."""
        _, degraded_by = self._evaluate(now)
        state = self._state
        rtts = self._rtt_order()
        rtt_p50 = _percentile(rtts, 0.50) if rtts else None
        if self._transits:
            transits = sorted(self._transits)
            relative_latest = self._transits[-1] - transits[0]
            relative_p99 = _percentile(transits, 0.99) - transits[0]
        else:
            relative_latest = relative_p99 = None
        return LinkFigures(
            state=state,
            degraded_by=degraded_by,
            last_heard_age_ms=(now - self._last_heard) * 1e3
            if math.isfinite(self._last_heard) else None,
            rtt_ms=_seconds_to_ms(self._rtts[-1] if self._rtts else None),
            rtt_p50_ms=_seconds_to_ms(rtt_p50),
            rtt_p99_ms=_seconds_to_ms(self._rtt_p99 if rtts else None),
            one_way_delay_ms=_seconds_to_ms(None if rtt_p50 is None else rtt_p50 / 2.0),
            relative_delay_ms=_seconds_to_ms(relative_latest),
            relative_delay_p99_ms=_seconds_to_ms(relative_p99),
            loss_percent=self.loss_percent(),
            jitter_ms=self._jitter * 1e3,
            received=self.received,
            bytes_received=self.bytes_received,
            duplicates=self.duplicates,
            reordered=self.reordered,
            reorder_percent=100.0 * self.reordered / self.received if self.received else 0.0,
            too_old=self.too_old,
            down_events=self.down_events,
        )

    def loss_percent(self) -> float:
        """Sequence numbers missing in the window, in % of those expected."""
        if self._highest is None:
            return 0.0
        expected = min(self._window, self._highest - self._first_sequence + 1)
        return 100.0 * (expected - self._received_bits.bit_count()) / expected

    def _rtt_order(self) -> list[float]:
        if self._sorted_rtts is None:
            self._sorted_rtts = sorted(self._rtts)
            self._rtt_p99 = _percentile(self._sorted_rtts, 0.99)
        return self._sorted_rtts

    def _evaluate(self, now: float) -> tuple[LinkState, tuple[str, ...]]:
        # Against silent_at itself, not now - last heard >= timeout: update(next_deadline())
        # then goes DOWN whatever the float rounding.
        if now >= self.silent_at:
            return LinkState.DOWN, ()
        config = self.config
        scale = config.recovery_ratio if self._state is LinkState.DEGRADED else 1.0
        degraded_by = ()
        if self.loss_percent() > config.degraded_loss_percent * scale:
            degraded_by += ("loss",)
        if self._rtt_order() and self._rtt_p99 * 1e3 > config.degraded_rtt_p99_ms * scale:
            degraded_by += ("rtt",)
        if self._jitter * 1e3 > config.degraded_jitter_ms * scale:
            degraded_by += ("jitter",)
        return (LinkState.DEGRADED if degraded_by else LinkState.UP), degraded_by


class LinkHealth:
    """The configured links' monitors and the overall state over them."""

    def __init__(self, link_names: Sequence[str],
                 config: LinkHealthConfig | None = None) -> None:
        if isinstance(link_names, str) or not link_names:
            raise ValueError(f"link_names must be a non-empty sequence of names, "
                             f"got {link_names!r}")
        if len(set(link_names)) != len(link_names):
            raise ValueError(f"link names must be unique, got {list(link_names)}")
        self.config = config or LinkHealthConfig.defaults()
        self.links: dict[str, LinkMonitor] = {
            name: LinkMonitor(self.config) for name in link_names}
        self._state = OverallState.LOST

    @property
    def state(self) -> OverallState:
        """The overall state as of the last update()."""
        return self._state

    def update(self, now: float) -> list[StateChange]:
        """State changes since the last call: links first, then the overall state."""
        changes = []
        alive = 0
        for name, monitor in self.links.items():
            previous = monitor.state
            current = monitor.update(now)
            if current is not previous:
                changes.append(StateChange(name, previous, current))
            if current is not LinkState.DOWN:
                alive += 1
        overall = self._overall(alive)
        if overall is not self._state:
            changes.append(StateChange(None, self._state, overall))
            self._state = overall
        return changes

    def next_deadline(self, now: float) -> float | None:
        """When update() must next be called for a link to go DOWN (or the path LOST) on time,
        if nothing more arrives: now when such a change is already due; None when every link
        is DOWN and nothing arrived since."""
        deadlines = [monitor.silent_at for monitor in self.links.values()
                     if monitor.state is not LinkState.DOWN or monitor.silent_at > now]
        return max(now, min(deadlines)) if deadlines else None

    def snapshot(self, now: float) -> HealthSnapshot:
        """Every link's figures at now, with the states as of the last update() (see
        LinkMonitor.figures)."""
        return HealthSnapshot(self._state, {name: monitor.figures(now)
                                            for name, monitor in self.links.items()})

    def _overall(self, alive_links: int) -> OverallState:
        if alive_links == 0:
            return OverallState.LOST
        if alive_links == len(self.links) >= 2:
            return OverallState.REDUNDANT
        return OverallState.SINGLE
