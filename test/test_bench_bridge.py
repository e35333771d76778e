"""The bridge benchmarks' driver (bridge_pair) and their figures: short real streams with
generous bounds, and the pure parts (reports, the rate search) on made-up trials."""

import time

import pytest
from geometry_msgs.msg import PoseStamped
from rclpy.serialization import deserialize_message

from telesurg.bench import failover, flood, overhead, throughput
from telesurg.bench.bridge_pair import (
    MASTER,
    PATIENT,
    SitePair,
    Trial,
    bridge_ends,
    command_cdr,
    raw_udp_ends,
    read_command,
)
from telesurg.bench.stream import PAYLOAD_BYTES
from telesurg.bridge.core import header_stamp_ns
from telesurg.bridge.wire import PROTOCOL_VERSION


@pytest.fixture(scope="module")
def pair():
    with SitePair() as sites:
        yield sites


def test_a_command_is_a_pose_stamped_carrying_its_sequence_and_send_time():
    wall_ns = time.time_ns()
    cdr = command_cdr(7, 123_456_789_012, wall_ns)
    message = deserialize_message(cdr, PoseStamped)
    assert message.header.stamp.sec * 10**9 + message.header.stamp.nanosec == wall_ns
    assert message.pose.orientation.w == 1.0
    assert read_command(cdr) == (7, 123_456_789_012)
    assert header_stamp_ns(cdr) == wall_ns  # the bridge ages it from the stamp
    assert abs(len(cdr) - PAYLOAD_BYTES) <= 8


@pytest.mark.multiprocess
@pytest.mark.parametrize("links", [0, 1, 2], ids=["raw_udp", "bridge_one_link",
                                                   "bridge_two_links"])
def test_a_short_stream_arrives_whole_and_fast(pair, tmp_path, links):
    if links:
        with bridge_ends(tmp_path, links) as (master, patient, _):
            trial = pair.trial(master, patient, 500.0, 1.0)
    else:
        trial = pair.trial(*raw_udp_ends(), 500.0, 1.0)
    summary = trial.summary()
    assert summary["sent"] == 500 and summary["lost"] == 0 and summary["duplicates"] == 0
    assert 0.0 < summary["latency_ms"]["p50"] < 50.0  # loopback: well under 1 ms when idle
    assert trial.send_rate_hz > 400.0
    assert set(trial.cpu_percent) == {MASTER, PATIENT}


@pytest.mark.multiprocess
def test_dual_link_loses_nothing_when_a_is_cut_and_single_link_loses_the_outage():
    result = failover.run(rounds=1, phases_s=(0.5, 1.0, 0.5), rate_hz=500.0)
    dual, single = result.figures["dual_link"], result.figures["single_link"]
    assert dual["sent"] == single["sent"] == 1000
    assert dual["lost"] == 0
    assert 400 <= single["lost"] <= 600  # 500 sent while cut, and those in flight at the cut
    assert single["largest_gap_at_cut_ms"] > 900.0
    assert dual["largest_gap_at_cut_ms"] < 500.0
    assert single["command_age_outage_ms"]["p50"] is None  # nothing crossed while a was cut
    assert 55.0 < dual["command_age_outage_ms"]["p50"] < 500.0  # over b: 60 ms one way
    targets = {row.figure: row.met for row in result.rows if row.met is not None}
    assert targets["commands lost"] is True
    assert set(targets) == {"commands lost", "largest gap between delivered commands"}
    assert all(row.met is None for row in result.rows if row.variant == "single_link")


@pytest.mark.multiprocess
def test_a_short_overhead_run_reports_every_variant():
    result = overhead.run(rounds=1, round_s=0.5, rate_hz=500.0, topic_rounds=0)
    for variant in ("raw_udp", "bridge_one_link", "bridge_two_links"):
        figures = result.figures[variant]
        assert figures["lost"] == 0 and figures["sent"] == 250
        assert set(figures["latency_ms"]) == {"p50", "p99", "max"}
    assert set(result.figures["bridge_added_ms"]) == {"one_link", "two_links"}
    assert "topic_to_topic_ms" not in result.figures


def made_up_trial(latency_ms: float, sent: int = 1000, counters=None) -> Trial:
    arrivals = [(sequence, sequence * 1_000_000, sequence * 1_000_000 + int(latency_ms * 1e6))
                for sequence in range(sent)]
    return Trial(sent, arrivals, 1000.0, {MASTER: 10.0, PATIENT: 12.0}, counters or {})


def test_the_bridge_added_latency_is_the_pooled_difference_and_misses_are_named():
    trials = {"raw_udp": [made_up_trial(0.1)] * 2, "bridge_one_link": [made_up_trial(0.3)] * 2,
              "bridge_two_links": [made_up_trial(1.5)] * 2}
    topic = ([made_up_trial(2.0, counters={"bridge_delivered": 990})], {MASTER: 60.0,
                                                                        PATIENT: 25.0})
    result = overhead.report(trials, topic, 1000.0, 1.0)
    assert result.figures["bridge_added_ms"] == {"one_link": {"p50": 0.2, "p99": 0.2},
                                                 "two_links": {"p50": 1.4, "p99": 1.4}}
    met = {(row.variant, row.figure): row.met for row in result.rows if row.met is not None}
    assert met == {("bridge_one_link", "bridge-added p50"): True,
                   ("bridge_one_link", "bridge-added p99"): True,
                   ("bridge_two_links", "bridge-added p50"): False,
                   ("bridge_two_links", "bridge-added p99"): False}
    assert any("bridge_two_links: bridge-added p50" in note for note in result.notes)
    assert result.figures["topic_to_topic_ms"]["p50"] == 2.0
    assert result.figures["topic_to_topic"]["lost_before_patient_bridge"] == 10
    assert result.figures["topic_to_topic"]["bridge_node_cpu_percent"] == {MASTER: 60.0,
                                                                           PATIENT: 25.0}


def fake_verdict(rate_hz, duration_s, capacity_hz):
    passed = rate_hz <= capacity_hz
    verdict = throughput.Verdict(rate_hz, duration_s, passed, 0.0 if passed else 1.0, 0.5,
                                 rate_hz, {MASTER: 10.0, PATIENT: 12.0})
    verdict.raw_udp = throughput.Verdict(rate_hz, duration_s, True, 0.0, 0.1, rate_hz,
                                         {MASTER: 5.0, PATIENT: 3.0})
    return verdict


@pytest.mark.parametrize("search_capacity, confirm_capacity, sustained, tried", [
    (5000, 5000, 5000, [1000, 2000, 4000, 8000, 6000, 5000, 5000]),
    (5000, 4500, 4000, [1000, 2000, 4000, 8000, 6000, 5000, 5000, 4000]),
    (5000, 2000, None, [1000, 2000, 4000, 8000, 6000, 5000, 5000, 4000]),
    (1000, 800, 500, [1000, 2000, 1500, 1200, 1000, 500]),
    (500, 500, None, [1000]),
])
def test_the_rate_search_doubles_bisects_and_confirms(search_capacity, confirm_capacity,
                                                       sustained, tried):
    searched, confirmed = throughput.find_sustained_rate(
        lambda rate: fake_verdict(rate, 3.0, search_capacity),
        lambda rate: fake_verdict(rate, 30.0, confirm_capacity))
    assert [verdict.rate_hz for verdict in searched + confirmed] == tried
    result = throughput.report(searched, confirmed)
    assert result.figures["max_sustained_rate_hz"] == sustained
    assert result.rows[0].met is (sustained is not None)
    assert result.figures["cpu_percent_at_1khz"] == {
        "bridge": {MASTER: 10.0, PATIENT: 12.0}, "raw_udp": {MASTER: 5.0, PATIENT: 3.0}}


@pytest.mark.multiprocess  # the benchmark's site and flooder processes
@pytest.mark.parametrize("kind", flood.KINDS)
def test_a_short_flood_step_is_rejected_whole_and_the_commands_still_arrive(pair, tmp_path,
                                                                            kind):
    step = flood.run_step(pair, tmp_path, kind, rate_per_link=5000, duration_s=1.0)
    assert step["achieved_per_link"] >= 2500  # generous: the flooder shares the machine
    assert step["rejected"] == 2 * step["achieved_per_link"]  # every forged one, both links
    assert step["delivered_fraction"] >= flood.DELIVERED_FRACTION and step["held"]


def test_a_flood_kind_withstood_the_highest_rate_below_its_first_failure():
    steps = [{"rate_per_link": rate, "held": held, "achieved_per_link": rate}
             for rate, held in ((10_000, True), (25_000, True), (50_000, False),
                                (75_000, True))]
    assert flood.withstood(steps)["rate_per_link"] == 25_000
    assert flood.withstood(steps[2:3]) is None


def test_forged_datagrams_have_valid_headers_and_the_kind_s_sender():
    forged = flood.forged_datagrams("peer_sender", 1, 0xABC, 3)
    headers = [flood._HEADER.unpack_from(datagram) for datagram in forged]
    assert {(h[0], h[2], h[3]) for h in headers} == {(PROTOCOL_VERSION, 1, 0xABC)}
    assert len({h[4] for h in headers}) == 3  # fresh sequences: each one costs a decryption
    senders = {flood._HEADER.unpack_from(d)[3]
               for d in flood.forged_datagrams("forged_senders", 0, 0xABC, 50)}
    assert len(senders) == 50 and 0xABC not in senders
