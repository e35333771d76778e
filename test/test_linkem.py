"""The link emulator's statistics match its settings; queue, outages, seeds and parsing behave."""

import math
import re
from dataclasses import dataclass, replace

import numpy as np
import pytest

from telesurg.linkem.model import (
    PROFILES,
    GilbertElliott,
    LinkModel,
    LinkProfile,
    Outage,
    outage_timeline,
    parse_outage,
)

DATAGRAM_BYTES = 200
# A cellular-like path without loss, for the delay statistics.
JITTERY = LinkProfile(delay_ms=70.0, jitter_ms=4.0)


@dataclass(frozen=True)
class LinkStats:
    """What a run of datagrams through a link showed. Delays are of each datagram's first copy.

    Percentages: loss of sent datagrams; duplicates and reordering of delivered ones, reordered
    meaning delivered before some datagram sent earlier (the overtaker is the one counted).
    """

    sent: int
    delivered: int
    mean_delay_ms: float
    delay_std_ms: float
    loss_pct: float
    duplicate_pct: float
    reorder_pct: float
    mean_loss_burst: float  # mean run length of consecutive lost datagrams
    loss_bursts: int

    @classmethod
    def from_run(cls, send_times, deliveries: list[list[float]]) -> "LinkStats":
        """Statistics from send times (in send order) and the schedule() answer for each."""
        send_times = np.asarray(send_times, dtype=float)
        lost = np.array([not times for times in deliveries], dtype=bool)
        first = np.array([times[0] for times in deliveries if times], dtype=float)
        delays_ms = 1e3 * (first - send_times[~lost])
        duplicates = sum(len(times) > 1 for times in deliveries)
        overtakers = int(np.count_nonzero(first[1:] < np.maximum.accumulate(first)[:-1]))
        # Loss bursts: runs of True in lost, found at their rising and falling edges.
        edges = np.diff(np.concatenate(([0], lost.astype(np.int8), [0])))
        burst_lengths = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
        delivered = len(first)
        return cls(
            sent=len(deliveries),
            delivered=delivered,
            mean_delay_ms=float(delays_ms.mean()) if delivered else math.nan,
            delay_std_ms=float(delays_ms.std()) if delivered else math.nan,
            loss_pct=100.0 * int(np.count_nonzero(lost)) / max(1, len(deliveries)),
            duplicate_pct=100.0 * duplicates / max(1, delivered),
            reorder_pct=100.0 * overtakers / max(1, delivered),
            mean_loss_burst=float(burst_lengths.mean()) if len(burst_lengths) else 0.0,
            loss_bursts=len(burst_lengths),
        )


def _run(profile, count, rate_hz=1000.0, seed=1, outages=()):
    """Send count datagrams at rate_hz; the send times, what schedule() said, and the stats."""
    model = LinkModel(profile, seed, outages)
    send_times = np.arange(count) / rate_hz
    deliveries = [model.schedule(t, DATAGRAM_BYTES) for t in send_times.tolist()]
    return send_times, deliveries, LinkStats.from_run(send_times, deliveries)


def _binomial_tolerance_pct(probability, trials, sigmas=4.0):
    return 100.0 * sigmas * math.sqrt(probability * (1.0 - probability) / trials)


# The jitter process is correlated over jitter_correlation_ms (T), so a run of duration D holds
# about D / 2T independent delay samples: 100 s at 1 kHz puts the std estimate within 3.2%
# (1 sigma), 500 s at 100 Hz within 1.4%; the mean is then within 0.25 ms (0.4%) or better.
@pytest.mark.parametrize(("rate_hz", "count"), [(100.0, 50_000), (1000.0, 100_000)])
def test_delay_mean_and_jitter_match_the_settings(rate_hz, count):
    _, _, stats = _run(JITTERY, count, rate_hz)
    assert stats.mean_delay_ms == pytest.approx(JITTERY.delay_ms, rel=0.02)
    assert stats.delay_std_ms == pytest.approx(JITTERY.jitter_ms, rel=0.10)
    assert stats.loss_pct == 0.0 and stats.reorder_pct == 0.0


@pytest.mark.parametrize("bandwidth_mbps", [0.0, 2.0])
def test_without_reordering_delivery_follows_send_order_even_with_wild_jitter(bandwidth_mbps):
    # Jitter 20x the packet period and nearly independent per datagram: the raw delays would
    # reorder constantly; the clamp to the latest delivery (equal times) keeps the order.
    profile = LinkProfile(delay_ms=30.0, jitter_ms=20.0, jitter_correlation_ms=1.0,
                          bandwidth_mbps=bandwidth_mbps)
    _, deliveries, stats = _run(profile, 20_000)
    first_copies = np.array([times[0] for times in deliveries])
    steps = np.diff(first_copies)
    assert np.all(steps >= 0.0)
    assert np.count_nonzero(steps == 0.0) > 0.1 * len(steps)  # the clamp was exercised
    assert stats.reorder_pct == 0.0


def test_random_loss_is_within_binomial_tolerance():
    profile = LinkProfile(delay_ms=10.0, loss_pct=1.0)
    _, _, stats = _run(profile, 50_000)
    assert stats.loss_pct == pytest.approx(1.0, abs=_binomial_tolerance_pct(0.01, 50_000))
    assert stats.mean_loss_burst < 1.1  # independent losses rarely touch


def test_gilbert_elliott_loss_rate_and_burst_length():
    burst = GilbertElliott(good_to_bad=0.01, bad_to_good=0.25, bad_loss=1.0)
    count = 100_000
    _, _, stats = _run(LinkProfile(delay_ms=10.0, burst_loss=burst), count)
    bad = burst.good_to_bad / (burst.good_to_bad + burst.bad_to_good)
    assert burst.loss_fraction == pytest.approx(bad * burst.bad_loss)
    # Consecutive states are correlated (eigenvalue kept = 1 - both switch probabilities), which
    # widens the loss count's variance by (1 + kept) / (1 - kept) over the binomial one.
    kept = 1.0 - burst.good_to_bad - burst.bad_to_good
    loss_sigma_pct = 100.0 * math.sqrt(bad * (1.0 - bad) * (1.0 + kept) / (1.0 - kept) / count)
    assert stats.loss_pct == pytest.approx(100.0 * bad, abs=4.0 * loss_sigma_pct)
    # Bad runs are geometric: mean 1 / bad_to_good, std sqrt(1 - bad_to_good) / bad_to_good.
    burst_sigma = math.sqrt(1.0 - burst.bad_to_good) / burst.bad_to_good
    assert stats.mean_loss_burst == pytest.approx(
        1.0 / burst.bad_to_good, abs=4.0 * burst_sigma / math.sqrt(stats.loss_bursts))


def test_duplicates_are_within_binomial_tolerance():
    _, deliveries, stats = _run(LinkProfile(delay_ms=10.0, duplicate_pct=2.0), 50_000)
    assert stats.duplicate_pct == pytest.approx(
        2.0, abs=_binomial_tolerance_pct(0.02, stats.delivered))
    assert all(len(times) in (1, 2) for times in deliveries)


def test_reordering_is_within_binomial_tolerance_and_mostly_swaps_neighbours():
    profile = replace(JITTERY, reorder_pct=3.0)
    _, deliveries, stats = _run(profile, 50_000)
    assert stats.reorder_pct == pytest.approx(
        3.0, abs=_binomial_tolerance_pct(0.03, stats.delivered))
    # An overtaker arrives just before the latest delivery: the delay barely changes, and
    # mostly it swaps places with its predecessor (two overtakers in a row move it by two).
    assert stats.mean_delay_ms == pytest.approx(JITTERY.delay_ms, rel=0.02)
    first_copies = np.array([times[0] for times in deliveries])
    displacement = np.abs(np.argsort(first_copies, kind="stable") - np.arange(len(deliveries)))
    assert np.count_nonzero(displacement == 1) > 0.9 * np.count_nonzero(displacement)


def test_back_to_back_datagrams_leave_one_serialization_time_apart():
    profile = LinkProfile(delay_ms=5.0, bandwidth_mbps=10.0)
    model = LinkModel(profile, seed=1)
    size_bytes = 1250  # 10,000 bits: 1 ms at 10 Mb/s
    deliveries = [model.schedule(0.0, size_bytes) for _ in range(10)]
    expected = [0.005 + 0.001 * (index + 1) for index in range(10)]
    assert [times[0] for times in deliveries] == pytest.approx(expected)


def test_queue_drops_beyond_its_limit_and_accepts_again_as_it_drains():
    profile = LinkProfile(bandwidth_mbps=10.0, queue_limit_bytes=5000)
    model = LinkModel(profile, seed=1)
    size_bytes = 1000  # 0.8 ms at 10 Mb/s
    burst = [model.schedule(0.0, size_bytes) for _ in range(8)]
    assert [bool(times) for times in burst] == [True] * 5 + [False] * 3
    # One datagram has left 0.8 ms later: room for exactly one more.
    assert model.schedule(0.0008, size_bytes)
    assert model.schedule(0.0008, size_bytes) == []


def test_outages_drop_exactly_the_datagrams_sent_inside_their_windows():
    outages = (Outage(1.0, 0.5), Outage(2.2, 0.1))
    send_times, deliveries, stats = _run(LinkProfile(delay_ms=20.0, jitter_ms=1.0), 3000,
                                         outages=outages)
    lost = np.array([not times for times in deliveries])
    inside = np.array([any(o.start_s <= t < o.start_s + o.duration_s for o in outages)
                       for t in send_times])
    np.testing.assert_array_equal(lost, inside)
    assert stats.loss_bursts == 2


def test_same_seed_same_schedule_other_seed_other_schedule():
    profile = replace(PROFILES["cellular_transcontinental"], duplicate_pct=1.0, reorder_pct=1.0)
    _, first, _ = _run(profile, 5000, seed=7)
    _, again, _ = _run(profile, 5000, seed=7)
    _, other, _ = _run(profile, 5000, seed=8)
    assert first == again
    assert first != other


@pytest.mark.parametrize(("make", "message"), [
    (lambda: LinkProfile(delay_ms=-1.0), r"LinkProfile\.delay_ms must be in \[0, inf\)"),
    (lambda: LinkProfile(jitter_ms=math.nan), r"LinkProfile\.jitter_ms must be in \[0, inf\)"),
    (lambda: LinkProfile(jitter_correlation_ms=0.0),
     r"LinkProfile\.jitter_correlation_ms must be in \(0, inf\)"),
    (lambda: LinkProfile(loss_pct=101.0), r"LinkProfile\.loss_pct must be in \[0, 100\]"),
    (lambda: LinkProfile(duplicate_pct=-0.5), r"LinkProfile\.duplicate_pct must be in \[0, 100\]"),
    (lambda: LinkProfile(reorder_pct=200.0), r"LinkProfile\.reorder_pct must be in \[0, 100\]"),
    (lambda: LinkProfile(bandwidth_mbps=math.inf),
     r"LinkProfile\.bandwidth_mbps must be in \[0, inf\)"),
    (lambda: LinkProfile(queue_limit_bytes=0),
     r"LinkProfile\.queue_limit_bytes must be in \(0, inf\)"),
    (lambda: LinkProfile(burst_loss=(0.1, 0.2, 1.0)), r"LinkProfile\.burst_loss must be"),
    (lambda: GilbertElliott(good_to_bad=1.5, bad_to_good=0.5),
     r"GilbertElliott\.good_to_bad must be in \[0, 1\]"),
    (lambda: GilbertElliott(good_to_bad=0.1, bad_to_good=0.0),
     r"GilbertElliott\.bad_to_good must be in \(0, 1\]"),
    (lambda: GilbertElliott(good_to_bad=0.1, bad_to_good=0.5, bad_loss=-0.1),
     r"GilbertElliott\.bad_loss must be in \[0, 1\]"),
    (lambda: Outage(-1.0, 1.0), r"Outage\.start_s must be in \[0, inf\)"),
    (lambda: Outage(1.0, 0.0), r"Outage\.duration_s must be in \(0, inf\)"),
])
def test_invalid_settings_name_the_field_and_its_range(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(("text", "link", "outage"), [
    ("a@5+5", "a", Outage(5.0, 5.0)),
    ("all@0+0.5", "all", Outage(0.0, 0.5)),
    ("fiber_2@2.5+.25", "fiber_2", Outage(2.5, 0.25)),
    (" cell-5g@10+1 ", "cell-5g", Outage(10.0, 1.0)),
])
def test_parse_outage_accepts_link_at_start_plus_duration(text, link, outage):
    assert parse_outage(text) == (link, outage)


@pytest.mark.parametrize("text", [
    "", "a", "a@5", "a@5+", "@5+5", "5g@1+1", "a@x+5", "a@5+5+1", "a@inf+1", "a@nan+1",
    "a@1e3+1", "a 5+5",
])
def test_parse_outage_refuses_other_text(text):
    with pytest.raises(ValueError, match="LINK@START\\+DURATION"):
        parse_outage(text)


@pytest.mark.parametrize("text, says", [
    ("a@-1+5", "'a@-1+5': START -1 s is negative"),
    ("a@5+-1", "'a@5+-1': DURATION -1 s is not positive"),
    ("a@5+0", "'a@5+0': DURATION 0 s is not positive"),
])
def test_parse_outage_says_which_number_is_wrong(text, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_outage(text)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_named_profile_validates(name):
    assert replace(PROFILES[name]) == PROFILES[name]  # replace() runs __post_init__ again


def test_named_profiles_have_the_intended_character():
    assert {"lan", "fiber_transcontinental", "cellular_transcontinental", "perfect"} <= set(
        PROFILES)
    assert PROFILES["perfect"] == LinkProfile()
    assert PROFILES["lan"].expected_loss_pct == 0.0
    fiber, cellular = PROFILES["fiber_transcontinental"], PROFILES["cellular_transcontinental"]
    assert fiber.delay_ms == pytest.approx(60.0, abs=5.0) and fiber.jitter_ms < 1.0
    assert fiber.expected_loss_pct == pytest.approx(0.01)
    assert cellular.delay_ms == pytest.approx(70.0, abs=5.0) and cellular.jitter_ms >= 2.0
    assert cellular.expected_loss_pct == pytest.approx(0.5, abs=0.05)
    assert cellular.burst_loss.loss_fraction > 0.8 * cellular.expected_loss_pct / 100.0


def test_outage_timeline_merges_overlaps_and_expands_all():
    outages = [parse_outage("a@5+5"), parse_outage("a@8+4"), parse_outage("all@20+1")]
    assert outage_timeline(outages, ("a", "b")) == [
        (5.0, "a", True), (12.0, "a", False),
        (20.0, "a", True), (20.0, "b", True), (21.0, "a", False), (21.0, "b", False)]
    # Back-to-back outages keep the link down across the seam.
    assert outage_timeline([parse_outage("b@1+1"), parse_outage("b@2+1")], ("a", "b")) == [
        (1.0, "b", True), (3.0, "b", False)]
    with pytest.raises(ValueError, match="unknown link 'c'"):
        outage_timeline([parse_outage("c@1+1")], ("a", "b"))
