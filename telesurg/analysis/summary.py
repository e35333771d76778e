"""The figures of a `telesurg demo` session (summary.json) and their printout: teleoperation
(summarize) from the sites' recordings, command delivery and the links (network_summary) from
the bridges' /bridge/link_state reports, and the pauses (safety_summary) from both.

Pure: recorded messages by site and topic, [(arrival ns, CDR bytes)], and decoded reports in.
"""

from __future__ import annotations

import numpy as np

from telesurg.analysis.metrics import (
    count_within,
    engage_offsets,
    following_intervals,
    largest_gap_within,
    largest_step,
    limit_violations,
    motion_while_held,
    percentiles,
)
from telesurg.analysis.recording import (
    decoded,
    following_changes,
    pose_track,
    safety_states,
    tracking_error_series,
    transitions,
)
from telesurg.arm.kinematics import ARM_JOINT_NAMES, JOINT_LIMITS, JOINT_NAMES, forward
from telesurg.contract import topics
from telesurg.contract.fields import link_state_values, stamp_ns
from telesurg.contract.graph import DEFAULT_LINKS
from telesurg.contract.states import LINK_OVERALL_ID, ArmHold, OperatingState, OverallState
from telesurg.contract.topics import MASTER, PATIENT
from telesurg.patient.safety import Cause

#: After a resume, how long the tip steps count towards resume_jump_mm.
RESUME_WINDOW_NS = 500_000_000
#: After a resume, how long the surgeon has to engage again.
REENGAGE_WINDOW_NS = 3_000_000_000


class SummaryError(Exception):
    """What a figure needs is missing; the message says what and where to look."""


def command_tip(message) -> np.ndarray:
    """The tool tip position of a joint command (/forward_position_controller/commands)."""
    return forward(np.asarray(message.data[:len(ARM_JOINT_NAMES)]))[:3, 3]


def summarize(messages: dict, task: str, seed: int, recorded_s: float) -> dict:
    """The teleoperation figures of a session that ran recorded_s seconds."""
    goals = pose_track(decoded(messages, MASTER, topics.PSM_SERVO_CP))
    setpoints = pose_track(decoded(messages, PATIENT, topics.PSM_SETPOINT_CP))
    measured = pose_track(decoded(messages, PATIENT, topics.PSM_MEASURED_CP))
    commands = decoded(messages, PATIENT, topics.FORWARD_POSITION_COMMANDS)
    command_times = [t for t, _ in commands]
    command_joints = [m.data for _, m in commands]
    lower = [JOINT_LIMITS[name].lower for name in JOINT_NAMES]
    upper = [JOINT_LIMITS[name].upper for name in JOINT_NAMES]
    changes = following_changes(decoded(messages, MASTER, topics.CONSOLE_FOLLOWING))
    intervals = following_intervals(changes, command_times[-1] if commands else 0)
    clutches = sum(1 for _, m in decoded(messages, MASTER, topics.CONSOLE_CLUTCH) if m.data)
    servo = messages[MASTER].get(topics.PSM_SERVO_CP.name, [])
    arrivals = [(t, stamp_ns(m)) for t, m in decoded(messages, PATIENT, topics.PSM_SERVO_CP)]
    following_s = sum(end - start for start, end in intervals) * 1e-9
    return {
        "task": task,
        "seed": seed,
        "duration_s": round(recorded_s, 3),
        # Commands go out while following only (not while clutched or disengaged).
        "command_rate_hz": round(count_within([t for t, _ in servo], intervals) / following_s,
                                 1) if following_s else 0.0,
        "command_gap_ms_max": round(1e-6 * largest_gap_within(arrivals, intervals), 3),
        "tracking_error_mm": percentiles(tracking_error_series(setpoints, measured)[1], 1000.0),
        "jump_max_mm": round(1000.0 * largest_step([command_tip(m) for _, m in commands]), 4),
        "joint_limit_violations": limit_violations(command_joints, lower, upper),
        "engagements": len(intervals),
        "clutch_presses": clutches,
        "following_s": round(following_s, 3),
        "motion_while_not_following_mm": round(1000.0 * motion_while_held(
            measured.times_ns, measured.positions_m, intervals), 4),
        "engage_offset_mm": round(1000.0 * max(engage_offsets(
            [start for start, _ in intervals], goals.times_ns, goals.positions_m,
            setpoints.times_ns, setpoints.positions_m), default=0.0), 4),
        "controller_ticks": len(commands),
    }


def print_summary(summary: dict, say=print) -> None:
    error = summary["tracking_error_mm"]
    age = summary["command_age_ms"]
    say(f"  commands: {summary['command_rate_hz']} Hz; bridged {summary['commands_sent']} sent, "
        f"{summary['commands_delivered']} delivered ({summary['commands_recovered']} from the "
        f"next datagram), {summary['commands_lost']} lost; "
        f"age at the patient bridge p50 {age['p50']} ms, p99 {age['p99']} ms"
        + (f" ({summary['command_ages_out_of_range']} ages out of range: clocks out of step?)"
           if summary["command_ages_out_of_range"] else "")
        + f"; largest gap while following {summary['command_gap_ms_max']} ms")
    say(f"  datagrams: {summary['duplicates_discarded']} second copies discarded, "
        f"{summary['rejected_datagrams']} rejected, {summary['untrusted_discarded']} from "
        "untrusted senders")
    for name, link in summary["links"].items():
        say(f"  link {name}: RTT p50 {link['rtt_ms_p50']} ms, p99 {link['rtt_ms_p99']} ms, "
            f"loss {link['loss_pct']} %, down {link['down_events']} times")
    say(f"  engagements {summary['engagements']}")
    pauses = [t for t in summary["transitions"] if t["to"] == OperatingState.PAUSED]
    say(f"  safety: {len(pauses)} pauses"
        + "".join(f"; {t['t_s']} s {t['cause']}" for t in pauses)
        + "".join(f"; FAULT at {fault['t_s']} s: {fault['cause']}"
                  for fault in summary["faults"]))
    say(f"  tracking error (tip measured vs setpoint): p50 {error['p50']} mm, "
        f"p99 {error['p99']} mm, max {error['max']} mm")
    say(f"  largest tip step per controller tick: {summary['jump_max_mm']} mm; "
        f"joint limit violations: {summary['joint_limit_violations']}")
    say(f"  clutch presses {summary['clutch_presses']}; arm motion while not following "
        f"{summary['motion_while_not_following_mm']} mm; first goal after an engage "
        f"{summary['engage_offset_mm']} mm from the held arm")
    if "replay_deviation_mm" in summary:
        deviation = summary["replay_deviation_mm"]
        say(f"  replay: tip path p50 {deviation['p50']} mm, p99 {deviation['p99']} mm, max "
            f"{deviation['max']} mm from the recorded one; compared {summary['replay_compared_s']}"
            f" s of the {summary['replay_following_s']} s it followed, "
            f"{summary['replay_differences']} differences in following "
            f"({summary['replay_rebased_stretches']} stretches compared from their start)")


def network_summary(master_states: list, patient_states: list) -> dict:
    """Command delivery and link figures from each site bridge's reports, (arrival ns,
    /bridge/link_state message): the final counters (after the drain), and per link the
    patient bridge's view over the session. SummaryError if a bridge never reported."""
    if not master_states or not patient_states:
        raise SummaryError("a bridge never reported its link state (see logs/*/bridge.log)")
    master = link_state_values(master_states[-1][1])[LINK_OVERALL_ID][1]
    patient = link_state_values(patient_states[-1][1])[LINK_OVERALL_ID][1]

    def number(values, key):
        return float(values[key]) if values.get(key) else None

    sent, delivered = int(master["commands_sent"]), int(patient["commands_delivered"])
    reports = [link_state_values(message) for _, message in patient_states]
    links = {}
    for name in DEFAULT_LINKS:
        views = [report[name][1] for report in reports if name in report]
        rtts = [float(v["rtt_ms"]) for v in views if v.get("rtt_ms")]
        rtt = percentiles(rtts)
        links[name] = {
            "rtt_ms_p50": rtt["p50"], "rtt_ms_p99": rtt["p99"],
            # Mean of the 10 Hz reports of loss over the last 1,000 sequence numbers.
            "loss_pct": round(float(np.mean([float(v["loss_percent"]) for v in views])), 4)
            if views else None,
            "down_events": int(views[-1]["down_events"]) if views else 0,
        }
    return {
        "commands_sent": sent,
        "commands_delivered": delivered,
        "commands_lost": sent - delivered,
        "commands_recovered": int(patient["recovered"]),
        "duplicates_discarded": int(patient["duplicates_discarded"]),
        "rejected_datagrams": int(master["rejected_datagrams"])
        + int(patient["rejected_datagrams"]),
        "untrusted_discarded": int(master["untrusted_discarded"])
        + int(patient["untrusted_discarded"]),
        "command_age_ms": {"p50": number(patient, "command_age_ms_p50"),
                           "p99": number(patient, "command_age_ms_p99")},
        "command_ages_out_of_range": int(patient["command_ages_out_of_range"]),
        "links": links,
    }


def safety_summary(messages: dict, patient_link_states: list, started_ns: int,
                   ended_ns: int) -> dict:
    """Operating state transitions (patient site, /safety/status), and for every pause: how fast
    the arm was held after the link was lost, how far it moved while paused, and how far it
    stepped in the 500 ms after the resume."""
    recorded = transitions(safety_states(decoded(messages, PATIENT, topics.SAFETY_STATUS)))
    # As summary.json lists them, timed from the task start; the figures below count from
    # these times.
    state_changes = [{"t_s": round((t.time_ns - started_ns) * 1e-9, 3), "from": t.previous,
                "to": t.current, "cause": t.cause} for t in recorded]
    holds = [(stamp_ns(m), hold) for _, m in decoded(messages, PATIENT, topics.DIAGNOSTICS)
             for hold in map(ArmHold.of, m.status) if hold is not None]
    setpoints = pose_track(decoded(messages, PATIENT, topics.PSM_SETPOINT_CP))
    measured = pose_track(decoded(messages, PATIENT, topics.PSM_MEASURED_CP))
    commands = decoded(messages, PATIENT, topics.FORWARD_POSITION_COMMANDS)
    reactions, paused_motion, resume_jumps = [], [], []
    for index, change in enumerate(state_changes):
        if change["to"] != OperatingState.PAUSED:
            continue
        paused_at = started_ns + int(change["t_s"] * 1e9)
        left = state_changes[index + 1] if index + 1 < len(state_changes) else None
        left_at = started_ns + int(left["t_s"] * 1e9) if left else None
        last_datagram = (_last_datagram_before_lost(patient_link_states, paused_at)
                         if Cause.LINK_LOST in change["cause"].split(", ") else None)
        hold_ns = _hold_start(holds, paused_at)
        if hold_ns is None:
            continue
        if last_datagram is not None:
            # The first hold the controller commanded after the last datagram: "commands
            # stale" if it was following, the PAUSED hold if it already held (a clutch).
            held = next((t for t, hold in holds if t >= last_datagram and hold.holding), None)
            if held is not None:
                reactions.append((held - last_datagram) * 1e-6)
        hold_pose = next((tip for t, tip in zip(setpoints.times_ns, setpoints.positions_m,
                                                strict=True) if t >= hold_ns), None)
        end = (left_at if left_at is not None else int(measured.times_ns[-1]) if len(measured)
               else hold_ns)
        if hold_pose is not None:
            paused_motion.append(max((float(np.linalg.norm(tip - hold_pose)) for t, tip
                                      in zip(measured.times_ns, measured.positions_m,
                                             strict=True) if hold_ns <= t <= end),
                                     default=0.0))
        if left is not None and left["to"] == OperatingState.ENABLED:
            window = [command_tip(m) for t, m in commands
                      if left_at <= t <= left_at + RESUME_WINDOW_NS]
            resume_jumps.append(largest_step(window))
    # Each resume with time left to re-engage (the surgeon re-presses the pedal after a second)
    # must be followed by following again.
    resumes = [started_ns + int(c["t_s"] * 1e9) for c in state_changes
               if c["from"] == OperatingState.PAUSED and c["to"] == OperatingState.ENABLED
               and started_ns + int(c["t_s"] * 1e9) + REENGAGE_WINDOW_NS <= ended_ns]
    following = following_changes(decoded(messages, MASTER, topics.CONSOLE_FOLLOWING))
    return {
        "pauses": sum(1 for c in state_changes if c["to"] == OperatingState.PAUSED),
        "faults": [{"t_s": c["t_s"], "cause": c["cause"]} for c in state_changes
                   if c["to"] == OperatingState.FAULT],
        "pause_reaction_ms": percentiles(reactions),
        "motion_while_paused_mm": round(1000.0 * max(paused_motion, default=0.0), 4),
        "resume_jump_mm": round(1000.0 * max(resume_jumps, default=0.0), 4),
        "following_after_resume": bool(resumes) and all(
            any(engaged and resume < t <= resume + REENGAGE_WINDOW_NS
                for t, engaged in following) for resume in resumes),
        "transitions": state_changes,
    }


def _hold_start(holds: list[tuple[int, ArmHold]], paused_at: int) -> int | None:
    """When the arm controller began the hold in force once it learned of the pause at
    paused_at: the start of the run of hold reports that includes the first one for PAUSED
    (for a lost link, usually "commands stale" came first)."""
    start = None
    for stamp, hold in holds:
        if not hold.holding:
            start = None
            continue
        if start is None:
            start = stamp
        if stamp >= paused_at - 100_000_000 and hold.paused:
            return start
    return None


def _last_datagram_before_lost(link_states: list, before_ns: int) -> int | None:
    """When the patient bridge last heard any link, from its last report before before_ns,
    if that says LOST: the report's stamp minus the smallest last-heard age."""
    for _, message in reversed(link_states):
        stamp = stamp_ns(message)
        if stamp > before_ns:
            continue
        report = link_state_values(message)
        if report.get(LINK_OVERALL_ID, ("",))[0] != OverallState.LOST:
            return None
        ages = [float(values["last_heard_age_ms"]) for name, (_, values) in report.items()
                if name != LINK_OVERALL_ID and values.get("last_heard_age_ms")]
        return stamp - int(min(ages) * 1e6) if ages else None
    return None
