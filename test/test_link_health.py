"""Link health: exact DOWN/LOST deadlines, DEGRADED thresholds with hysteresis, and the figures
(loss, RTT, RFC 3550 jitter, reordering, delay variation) on arrival patterns with known answers.
"""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telesurg.bridge.link_health import (
    LINK_TIMEOUT,
    LinkHealth,
    LinkHealthConfig,
    LinkMonitor,
    LinkState,
    OverallState,
    StateChange,
)

UP, DEGRADED, DOWN = LinkState.UP, LinkState.DEGRADED, LinkState.DOWN
REDUNDANT, SINGLE, LOST = OverallState.REDUNDANT, OverallState.SINGLE, OverallState.LOST
# What the bridge runs with when its configuration file does not say otherwise.
DEFAULTS = LinkHealthConfig.defaults()
TIMEOUT_S = DEFAULTS.link_timeout_ms * 1e-3  # the monitor's own arithmetic: exact deadlines
T0 = 1000.0  # a monotonic clock is far from 0


def arrive(monitor, now, sequence, transit_s=0.010, size=100):
    """A datagram sent transit_s before now (the sender's clock in ns, offset by an hour)."""
    sender_ns = round((now - transit_s + 3600.0) * 1e9)
    return monitor.on_datagram(now, sequence, sender_ns, size)


def before(t):
    return math.nextafter(t, -math.inf)


# -- configuration -------------------------------------------------------------------------


def test_default_config_is_valid():
    assert DEFAULTS.link_timeout_ms == LINK_TIMEOUT.default
    assert 0.0 < DEFAULTS.recovery_ratio <= 1.0
    assert LinkHealth(["a"]).config == DEFAULTS


@pytest.mark.parametrize("field, value", [
    ("link_timeout_ms", 0.0), ("link_timeout_ms", -1.0), ("link_timeout_ms", math.inf),
    ("link_timeout_ms", math.nan), ("link_timeout_ms", True), ("link_timeout_ms", "50"),
    ("datagram_window", 0), ("datagram_window", 10.0), ("datagram_window", 10**9),
    ("rtt_window", 0), ("rtt_window", True),
    ("degraded_loss_percent", -0.1), ("degraded_loss_percent", 100.1),
    ("degraded_loss_percent", math.nan),
    ("degraded_rtt_p99_ms", 0.0), ("degraded_rtt_p99_ms", math.nan),
    ("degraded_jitter_ms", -1.0),
    ("recovery_ratio", 0.0), ("recovery_ratio", 1.5), ("recovery_ratio", math.nan),
])
def test_config_rejects_invalid_values(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(DEFAULTS, **{field: value})


def test_config_accepts_disabled_thresholds():
    config = dataclasses.replace(DEFAULTS, degraded_loss_percent=math.inf,
                                 degraded_rtt_p99_ms=math.inf, degraded_jitter_ms=math.inf)
    monitor = LinkMonitor(config)
    arrive(monitor, T0, 0)
    arrive(monitor, T0 + 0.001, 50)  # 49 of 51 lost
    monitor.on_heartbeat_reply(T0 + 0.001, T0 - 10.0)
    assert monitor.update(T0 + 0.001) is UP


@pytest.mark.parametrize("names", [[], "ab", ["a", "a"]])
def test_link_names_must_be_a_non_empty_sequence_of_unique_names(names):
    with pytest.raises(ValueError):
        LinkHealth(names)


# -- UP / DOWN -------------------------------------------------------------------------------


def test_a_link_never_heard_is_down_and_the_path_lost():
    health = LinkHealth(["a", "b"])
    assert health.update(T0) == []
    assert health.state is LOST
    assert health.next_deadline(T0) is None
    snapshot = health.snapshot(T0)
    assert snapshot.state is LOST
    assert snapshot.links["a"].state is DOWN
    assert snapshot.links["a"].last_heard_age_ms is None
    assert snapshot.links["a"].rtt_p99_ms is None
    assert snapshot.links["a"].loss_percent == 0.0


def test_link_goes_down_exactly_at_the_timeout_and_up_again_on_a_datagram():
    monitor = LinkMonitor(DEFAULTS)
    heard = T0 + 0.0123
    arrive(monitor, heard, 7)
    assert monitor.update(heard) is UP
    assert monitor.silent_at == heard + TIMEOUT_S
    assert monitor.update(before(heard + TIMEOUT_S)) is UP
    assert monitor.update(heard + TIMEOUT_S) is DOWN
    assert monitor.down_events == 1
    back = heard + 1.0
    arrive(monitor, back, 1007)  # 999 datagrams lost in the outage
    assert monitor.update(back) is UP
    # The outage is a down event, not loss: the window restarts with the link.
    assert monitor.loss_percent() == 0.0
    assert monitor.down_events == 1


def test_a_silence_update_missed_still_counts_as_a_down_event():
    monitor = LinkMonitor(DEFAULTS)
    arrive(monitor, T0, 0)
    assert monitor.update(T0) is UP
    arrive(monitor, T0 + 0.2, 1)  # update() was not called while the link was silent
    assert monitor.down_events == 1
    assert monitor.update(T0 + 0.2) is UP
    assert monitor.down_events == 1


def test_duplicates_and_datagrams_older_than_the_window_do_not_keep_a_link_up():
    monitor = LinkMonitor(dataclasses.replace(DEFAULTS, datagram_window=100))
    arrive(monitor, T0, 500)
    arrive(monitor, T0 + 0.03, 500)  # a replay of the last datagram
    arrive(monitor, T0 + 0.04, 300)  # a replay from before the window
    assert monitor.update(T0 + TIMEOUT_S) is DOWN
    assert (monitor.duplicates, monitor.too_old, monitor.received) == (1, 1, 1)


def test_a_restarted_peer_counting_from_zero_again_is_picked_up_after_its_silence():
    monitor = LinkMonitor(DEFAULTS)
    for sequence in range(100):
        arrive(monitor, T0 + sequence * 0.001, 50_000 + sequence)
    restart = T0 + 2.0
    for sequence in range(10):
        arrive(monitor, restart + sequence * 0.001, sequence)
    assert monitor.update(restart + 0.01) is UP
    result = monitor.figures(restart + 0.01)
    assert result.loss_percent == 0.0
    assert result.too_old == 0
    assert result.received == 110


# -- DEGRADED --------------------------------------------------------------------------------


def test_degraded_on_loss_and_back_up_below_the_recovery_threshold():
    monitor = LinkMonitor(dataclasses.replace(DEFAULTS, datagram_window=100))
    lost = {10, 20, 30, 40, 50, 60}  # 6% > 5%
    t = T0
    for sequence in range(100):
        t = T0 + sequence * 0.001
        if sequence not in lost:
            arrive(monitor, t, sequence)
    assert monitor.update(t) is DEGRADED
    assert monitor.figures(t).degraded_by == ("loss",)
    # Clean datagrams push the losses out of the window: 5%, 4.something% stay DEGRADED
    # (recovery at 0.8 x 5% = 4%), 4% is UP.
    for sequence in range(100, 121):
        t = T0 + sequence * 0.001
        arrive(monitor, t, sequence)
        expected_lost = sum(lost_one > sequence - 100 for lost_one in lost)
        assert monitor.loss_percent() == pytest.approx(expected_lost)
        assert monitor.update(t) is (DEGRADED if expected_lost > 4 else UP)
    assert monitor.state is UP


def test_degraded_on_rtt_p99_and_back_up():
    monitor = LinkMonitor(dataclasses.replace(DEFAULTS, rtt_window=10, degraded_rtt_p99_ms=100.0))
    arrive(monitor, T0, 0)
    monitor.on_heartbeat_reply(T0, T0 - 0.090)
    assert monitor.update(T0) is UP
    monitor.on_heartbeat_reply(T0, T0 - 0.110)
    assert monitor.update(T0) is DEGRADED
    assert monitor.figures(T0).degraded_by == ("rtt",)
    for _ in range(9):  # the 110 ms sample still in the window
        monitor.on_heartbeat_reply(T0, T0 - 0.070)
    assert monitor.update(T0) is DEGRADED
    monitor.on_heartbeat_reply(T0, T0 - 0.070)  # pushes it out: p99 70 ms <= 80 ms
    assert monitor.update(T0) is UP


def test_degraded_on_jitter_and_back_up():
    monitor = LinkMonitor(dataclasses.replace(DEFAULTS, degraded_jitter_ms=5.0))
    t, sequence = T0, 0
    # Transit alternating 10 and 30 ms: |D| = 20 ms, J climbs towards 20 ms.
    while monitor.update(t) is not DEGRADED:
        arrive(monitor, t, sequence, transit_s=0.010 if sequence % 2 else 0.030)
        t, sequence = t + 0.001, sequence + 1
    assert monitor.figures(t).jitter_ms > 5.0
    assert monitor.figures(t).degraded_by == ("jitter",)
    # Constant transit: J decays by 15/16 per datagram, and must reach 4 ms to clear.
    while monitor.update(t) is DEGRADED:
        assert monitor.figures(t).jitter_ms > 4.0
        arrive(monitor, t, sequence)
        t, sequence = t + 0.001, sequence + 1
    assert monitor.figures(t).jitter_ms <= 4.0


# -- overall state ----------------------------------------------------------------------------


def test_overall_redundant_single_lost_with_exact_deadlines():
    health = LinkHealth(["a", "b"])
    a, b = health.links["a"], health.links["b"]
    arrive(a, T0, 0)
    assert health.update(T0) == [StateChange("a", DOWN, UP), StateChange(None, LOST, SINGLE)]
    assert health.next_deadline(T0) == T0 + TIMEOUT_S
    arrive(b, T0 + 0.010, 0)
    assert health.update(T0 + 0.010) == [StateChange("b", DOWN, UP),
                                         StateChange(None, SINGLE, REDUNDANT)]
    assert health.next_deadline(T0 + 0.010) == T0 + TIMEOUT_S
    arrive(b, T0 + 0.020, 1)
    assert health.update(T0 + 0.020) == []
    # a falls silent first, then b.
    a_deadline = health.next_deadline(T0 + 0.020)
    assert a_deadline == T0 + TIMEOUT_S
    assert health.update(before(a_deadline)) == []
    assert health.update(a_deadline) == [StateChange("a", UP, DOWN),
                                         StateChange(None, REDUNDANT, SINGLE)]
    lost_at = health.next_deadline(a_deadline)
    assert lost_at == T0 + 0.020 + TIMEOUT_S
    assert health.update(before(lost_at)) == []
    assert health.update(lost_at) == [StateChange("b", UP, DOWN),
                                      StateChange(None, SINGLE, LOST)]
    assert health.next_deadline(lost_at) is None
    assert health.snapshot(lost_at).links["a"].down_events == 1


def test_next_deadline_is_now_when_a_transition_is_overdue():
    health = LinkHealth(["a", "b"])
    arrive(health.links["a"], T0, 0)
    health.update(T0)
    assert health.next_deadline(T0 + 1.0) == T0 + 1.0
    health.update(T0 + 1.0)
    assert health.next_deadline(T0 + 1.0) is None
    # Heard again but not yet updated: its new deadline counts.
    arrive(health.links["b"], T0 + 2.0, 5)
    assert health.next_deadline(T0 + 2.0) == T0 + 2.0 + TIMEOUT_S


def test_one_configured_link_is_never_redundant():
    health = LinkHealth(["fiber"])
    arrive(health.links["fiber"], T0, 0)
    assert health.update(T0) == [StateChange("fiber", DOWN, UP),
                                 StateChange(None, LOST, SINGLE)]


def test_degraded_links_still_make_the_path_redundant():
    health = LinkHealth(["a", "b"], dataclasses.replace(DEFAULTS, degraded_rtt_p99_ms=10.0))
    for name in ("a", "b"):
        arrive(health.links[name], T0, 0)
        health.links[name].on_heartbeat_reply(T0, T0 - 0.020)
    health.update(T0)
    assert [health.links[name].state for name in ("a", "b")] == [DEGRADED, DEGRADED]
    assert health.state is REDUNDANT


def test_snapshot_reports_the_states_of_the_last_update_and_consumes_no_change():
    """Only update(), called by the thread that has just read the sockets, changes a state: a
    report made meanwhile (datagrams perhaps waiting unread) must not call a link silent."""
    health = LinkHealth(["a", "b"])
    arrive(health.links["a"], T0, 0)
    assert health.snapshot(T0).state is LOST  # heard, but not yet updated
    assert health.update(T0) == [StateChange("a", DOWN, UP), StateChange(None, LOST, SINGLE)]
    later = T0 + 2 * TIMEOUT_S  # link a silent by now, as far as anyone has read
    snapshot = health.snapshot(later)
    assert snapshot.state is SINGLE and snapshot.links["a"].state is UP
    assert snapshot.links["a"].last_heard_age_ms == pytest.approx(2000 * TIMEOUT_S)
    assert health.update(later) == [StateChange("a", UP, DOWN), StateChange(None, SINGLE, LOST)]


# -- figures -------------------------------------------------------------------------------


def test_loss_from_sequence_gaps_and_late_arrivals_filling_them():
    monitor = LinkMonitor(dataclasses.replace(DEFAULTS, datagram_window=1000))
    for sequence in range(100, 300):
        if sequence not in (110, 120, 130, 140):
            arrive(monitor, T0 + sequence * 1e-4, sequence)
    assert monitor.loss_percent() == pytest.approx(2.0)  # 4 of 200, window not full yet
    arrive(monitor, T0 + 0.03, 120)  # late, not lost
    assert monitor.loss_percent() == pytest.approx(1.5)
    assert monitor.reordered == 1


def test_loss_over_a_full_window_forgets_older_gaps():
    monitor = LinkMonitor(dataclasses.replace(DEFAULTS, datagram_window=100))
    for sequence in range(0, 400, 2):  # every other one lost
        arrive(monitor, T0 + sequence * 1e-4, sequence)
    assert monitor.loss_percent() == pytest.approx(50.0)
    for sequence in range(400, 450):
        arrive(monitor, T0 + sequence * 1e-4, sequence)
    assert monitor.loss_percent() == pytest.approx(25.0)


def test_rtt_latest_percentiles_and_one_way_delay_over_the_window():
    monitor = LinkMonitor(dataclasses.replace(DEFAULTS, rtt_window=50))
    rtts = np.random.default_rng(3).uniform(0.02, 0.2, 80)
    for index, rtt in enumerate(rtts):
        now = T0 + index * 0.01
        monitor.on_heartbeat_reply(now, now - rtt)
    arrive(monitor, T0 + 0.8, 0)
    result = monitor.figures(T0 + 0.8)
    window = rtts[-50:] * 1e3
    assert result.rtt_ms == pytest.approx(rtts[-1] * 1e3)
    assert result.rtt_p50_ms == pytest.approx(np.percentile(window, 50))
    assert result.rtt_p99_ms == pytest.approx(np.percentile(window, 99))
    assert result.one_way_delay_ms == pytest.approx(np.percentile(window, 50) / 2)


def test_a_reply_echoing_a_time_in_the_future_is_not_an_rtt():
    monitor = LinkMonitor(DEFAULTS)
    monitor.on_heartbeat_reply(T0, T0 + 0.001)
    monitor.on_heartbeat_reply(T0, math.nan)
    assert monitor.figures(T0).rtt_ms is None


def test_rfc3550_jitter_on_alternating_transit_times():
    monitor = LinkMonitor(DEFAULTS)
    count = 40
    for sequence in range(count):
        # Sent every 10 ms; transit 10 ms, 12 ms, 10 ms...: every |D| is 2 ms.
        arrive(monitor, T0 + sequence * 0.010, sequence, transit_s=0.010 + 0.002 * (sequence % 2))
    # J_n = J_(n-1) + (2 - J_(n-1)) / 16 from J_0 = 0 over count - 1 differences.
    expected_ms = 2.0 * (1.0 - (15.0 / 16.0) ** (count - 1))
    assert monitor.figures(T0).jitter_ms == pytest.approx(expected_ms, rel=1e-6)


def test_constant_transit_has_no_jitter_whatever_the_clock_offset():
    monitor = LinkMonitor(DEFAULTS)
    for sequence in range(50):
        arrive(monitor, T0 + sequence * 0.001, sequence, transit_s=-7200.0)  # sender ahead
    assert monitor.figures(T0).jitter_ms == pytest.approx(0.0, abs=1e-6)


def test_relative_delay_is_transit_above_the_smallest_in_the_window():
    monitor = LinkMonitor(DEFAULTS)
    for sequence, transit_ms in enumerate([15.0, 10.0, 30.0, 12.0]):
        arrive(monitor, T0 + sequence * 0.001, sequence, transit_s=transit_ms * 1e-3)
    result = monitor.figures(T0 + 0.004)
    assert result.relative_delay_ms == pytest.approx(2.0, abs=1e-6)
    assert result.relative_delay_p99_ms == pytest.approx(
        np.percentile([5.0, 0.0, 20.0, 2.0], 99), abs=1e-6)


def test_reordering_is_counted_without_loss():
    monitor = LinkMonitor(DEFAULTS)
    for index, sequence in enumerate([1, 2, 4, 3, 5]):
        arrive(monitor, T0 + index * 0.001, sequence)
    result = monitor.figures(T0 + 0.005)
    assert (result.reordered, result.reorder_percent, result.loss_percent) == (1, 20.0, 0.0)


def test_a_duplicate_is_neither_reordering_nor_negative_loss():
    monitor = LinkMonitor(DEFAULTS)
    for index, sequence in enumerate([1, 2, 2, 3, 3, 1]):
        arrive(monitor, T0 + index * 0.001, sequence, size=200)
    result = monitor.figures(T0 + 0.006)
    assert (result.duplicates, result.reordered, result.loss_percent) == (3, 0, 0.0)
    assert (result.received, result.bytes_received) == (3, 600)


def test_a_straggler_from_before_an_outage_is_ignored():
    monitor = LinkMonitor(DEFAULTS)
    arrive(monitor, T0, 99)
    arrive(monitor, T0 + 1.0, 100)  # restarts the window at 100
    arrive(monitor, T0 + 1.001, 98)
    assert (monitor.loss_percent(), monitor.too_old, monitor.reordered) == (0.0, 1, 0)
    arrive(monitor, T0 + 1.002, 102)
    assert monitor.loss_percent() == pytest.approx(100.0 / 3.0)  # 101 of 100..102


def test_last_heard_age():
    monitor = LinkMonitor(DEFAULTS)
    arrive(monitor, T0, 0)
    assert monitor.figures(T0 + 0.0125).last_heard_age_ms == pytest.approx(12.5)


# -- properties ------------------------------------------------------------------------------

arrivals = st.lists(st.tuples(st.floats(0.0, 0.2), st.integers(0, 300)), max_size=200)


@settings(max_examples=200, deadline=None)
@given(arrivals, st.integers(1, 64))
def test_loss_is_a_percentage_and_counts_add_up(events, window):
    monitor = LinkMonitor(dataclasses.replace(DEFAULTS, datagram_window=window))
    now = T0
    for step, sequence in events:
        now += step
        arrive(monitor, now, sequence)
        assert 0.0 <= monitor.loss_percent() <= 100.0
    result = monitor.figures(now)
    assert result.received + result.duplicates + result.too_old == len(events)
    assert 0.0 <= result.reorder_percent <= 100.0


# Each step: time advance, then which links (bit 0: a, bit 1: b) carry the next datagram.
histories = st.lists(st.tuples(st.floats(0.0, 0.08), st.integers(0, 3)), max_size=60)


def replay(health, history):
    """Feed a generated history (time step, bitmask of links heard) into health; return the
    final time and when each link was last heard."""
    last_heard = {"a": -math.inf, "b": -math.inf}
    now = T0
    for sequence, (step, links) in enumerate(history):
        now += step
        for bit, name in enumerate(("a", "b")):
            if links >> bit & 1:
                arrive(health.links[name], now, sequence)
                last_heard[name] = now
        health.update(now)
    return now, last_heard


@settings(max_examples=200, deadline=None)
@given(histories, st.floats(0.0, 0.1))
def test_lost_iff_no_link_heard_within_the_timeout(history, check_after):
    health = LinkHealth(["a", "b"])
    now, last_heard = replay(health, history)
    now += check_after
    health.update(now)
    alive = [now < heard + TIMEOUT_S for heard in last_heard.values()]
    assert (health.state is LOST) == (not any(alive))
    assert (health.state is REDUNDANT) == all(alive)


@settings(max_examples=200, deadline=None)
@given(histories)
def test_next_deadline_is_exactly_when_the_next_link_goes_down(history):
    health = LinkHealth(["a", "b"])
    now, _ = replay(health, history)
    while (deadline := health.next_deadline(now)) is not None:
        assert deadline > now
        assert health.update(before(deadline)) == []
        changes = health.update(deadline)
        assert changes and changes[0].current is DOWN
        now = deadline
    assert health.state is LOST


def test_snapshot_lists_every_figure_as_plain_data():
    health = LinkHealth(["a", "b"], dataclasses.replace(DEFAULTS, rtt_window=5))
    arrive(health.links["a"], T0, 0)
    health.links["a"].on_heartbeat_reply(T0, T0 - 0.02)
    health.update(T0)
    snapshot = health.snapshot(T0)
    figures_a = snapshot.links["a"]
    assert figures_a.state == "UP"  # StrEnum: publishes as its name
    assert figures_a.rtt_ms == pytest.approx(20.0)
    assert figures_a.one_way_delay_ms == pytest.approx(10.0)


def test_only_datagrams_that_prove_the_link_alive_now_are_counted():
    monitor = LinkMonitor(dataclasses.replace(DEFAULTS, datagram_window=100))
    assert arrive(monitor, T0, 500)
    assert arrive(monitor, T0 + 0.001, 502)
    assert arrive(monitor, T0 + 0.002, 501)  # late but new: reordered
    assert not arrive(monitor, T0 + 0.003, 501)  # the same again
    assert arrive(monitor, T0 + 0.004, 700)
    assert not arrive(monitor, T0 + 0.005, 590)  # beyond the window: maybe a replay
    assert monitor.duplicates == 1 and monitor.too_old == 1 and monitor.received == 4
