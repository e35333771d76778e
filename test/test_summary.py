"""The session summary: network figures from the bridges' /bridge/link_state reports, and the
safety figures from the supervisor's /safety/status."""

import json

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.serialization import serialize_message
from std_msgs.msg import String

from telesurg.analysis.summary import (
    SummaryError,
    network_summary,
    print_summary,
    safety_summary,
)
from telesurg.contract import topics


def report(overall: dict, links: dict) -> DiagnosticArray:
    def status(hardware_id, values):
        return DiagnosticStatus(hardware_id=hardware_id, message="REDUNDANT", values=[
            KeyValue(key=key, value=str(value)) for key, value in values.items()])
    return DiagnosticArray(status=[status(name, values) for name, values in links.items()]
                           + [status("overall", overall)])


def counters(**values):
    base = {"commands_sent": 0, "commands_delivered": 0, "recovered": 0, "duplicates_discarded": 0,
            "rejected_datagrams": 0, "untrusted_discarded": 0, "command_age_ms_p50": "",
            "command_age_ms_p99": "", "command_ages_out_of_range": 0}
    return base | values


def link(rtt_ms, loss, down_events):
    return {"rtt_ms": rtt_ms, "loss_percent": loss, "down_events": down_events}


def test_final_counters_and_link_figures_over_the_session():
    master = [(1, report(counters(commands_sent=5000, rejected_datagrams=1), {}))]
    patient = [
        (1, report(counters(commands_delivered=10),
                   {"a": link("", 0.0, 0), "b": link("", 0.0, 0)})),
        (2, report(counters(commands_delivered=4000), {"a": link(120.0, 0.2, 0),
                                               "b": link(130.0, 0.0, 0)})),
        (3, report(counters(commands_delivered=4998, recovered=2, duplicates_discarded=4990,
                            untrusted_discarded=3,
                            command_age_ms_p50="61.5", command_age_ms_p99="64.25",
                            command_ages_out_of_range=7),
                   {"a": link(124.0, 0.1, 1), "b": link(126.0, 0.0, 0)})),
    ]
    summary = network_summary(master, patient)
    assert summary["commands_sent"] == 5000 and summary["commands_delivered"] == 4998
    assert summary["commands_lost"] == 2 and summary["commands_recovered"] == 2
    assert summary["duplicates_discarded"] == 4990
    assert summary["rejected_datagrams"] == 1 and summary["untrusted_discarded"] == 3
    assert summary["command_age_ms"] == {"p50": 61.5, "p99": 64.25}
    assert summary["command_ages_out_of_range"] == 7
    a = summary["links"]["a"]
    assert a["rtt_ms_p50"] == 122.0 and 120.0 < a["rtt_ms_p99"] <= 124.0
    assert a["loss_pct"] == pytest.approx(0.1) and a["down_events"] == 1
    assert summary["links"]["b"]["down_events"] == 0


def test_a_bridge_that_never_reported_is_an_error():
    with pytest.raises(SummaryError, match="never reported"):
        network_summary([], [(1, report(counters(), {}))])


def status_messages(*states_and_causes, start_ns=0):
    """/safety/status messages as a recording holds them: (receive time, CDR), 1 s apart."""
    return [(start_ns + i * 10**9, serialize_message(String(data=json.dumps(
        {"state": state, "cause": cause}))))
        for i, (state, cause) in enumerate(states_and_causes)]


def test_a_fault_is_in_the_summary_with_its_time_and_cause():
    messages = {"master": {}, "patient": {topics.SAFETY_STATUS.name: status_messages(
        ("DISABLED", ""), ("ENABLED", "enable command"),
        ("FAULT", "arm joint states stopped"))}}
    summary = safety_summary(messages, [], started_ns=0, ended_ns=5 * 10**9)
    assert summary["faults"] == [{"t_s": 2.0, "cause": "arm joint states stopped"}]
    assert summary["pauses"] == 0
    printed = []
    print_summary(summary | FIGURES, printed.append)
    assert [line for line in printed if line.startswith("  safety:")] == [
        "  safety: 0 pauses; FAULT at 2.0 s: arm joint states stopped"]


#: What print_summary needs besides the safety figures.
FIGURES = {"tracking_error_mm": {"p50": 0.0, "p99": 0.0, "max": 0.0},
           "command_age_ms": {"p50": 1.0, "p99": 2.0}, "command_ages_out_of_range": 0,
           "command_rate_hz": 250.0, "commands_sent": 1, "commands_delivered": 1,
           "commands_recovered": 0, "commands_lost": 0, "command_gap_ms_max": 4.0,
           "duplicates_discarded": 1, "rejected_datagrams": 0, "untrusted_discarded": 0,
           "links": {}, "engagements": 1, "jump_max_mm": 0.1, "joint_limit_violations": 0,
           "clutch_presses": 0, "motion_while_not_following_mm": 0.0, "engage_offset_mm": 0.0}
