"""The pure parts of the session benchmarks (telesurg.bench.freeze, telesurg.bench.end_to_end):
what a freeze trial measures from the arm controller's decisions and the bridge's reports, and
how end_to_end finds the joint command a master step caused, on synthetic streams and on the
console mapping and arm controller themselves (no ROS, no processes).
"""

from __future__ import annotations

import numpy as np
import pytest

from telesurg.arm.kinematics import HOME_POSITIONS, forward
from telesurg.bench.end_to_end import (
    DIRECTIONS,
    STEP_INTERVAL_S,
    STEP_M,
    THRESHOLD_FRACTION,
    first_responses,
    step_latencies,
)
from telesurg.bench.freeze import lost_report, trial_figures
from telesurg.contract.states import ArmHold, HoldCause, OperatingState
from telesurg.master.teleop import MasterInput, TeleopConfig, TeleopMapping
from telesurg.patient.arm_control import ArmController, ArmControllerConfig

MS = 1_000_000
FOLLOWING = ArmHold(False, None, OperatingState.ENABLED)


def holding(cause: HoldCause, state: OperatingState = OperatingState.ENABLED) -> ArmHold:
    return ArmHold(True, cause, state)


# -- freeze ------------------------------------------------------------------------------------

def test_lost_report_is_the_first_lost_after_the_cut_minus_the_freshest_link():
    reports = [(900 * MS, "LOST", [120.0, 130.0]),  # an earlier outage: before the cut
               (1000 * MS, "REDUNDANT", [1.0, 2.0]),
               (1060 * MS, "SINGLE", [60.0, 8.0]),
               (1105 * MS, "LOST", [104.0, 101.5]),
               (1200 * MS, "LOST", [200.0, 197.5])]
    assert lost_report(reports, 1000 * MS) == (1105 * MS, 1105 * MS - int(101.5 * MS))
    assert lost_report(reports[:3], 1000 * MS) is None
    # A link never heard has no age: the other one tells.
    assert lost_report([(1105 * MS, "LOST", [None, 100.0])], 0) == (1105 * MS, 1005 * MS)


def held_arm(hold_ms: float, paused_hold_ms: float):
    """Decisions and tips of an arm following until the cut at 1000 ms, holding after."""
    decisions = [(100 * MS, holding(HoldCause.NO_COMMAND_YET)), (200 * MS, FOLLOWING),
                 (int(hold_ms * MS), holding(HoldCause.COMMANDS_STALE)),
                 (int(paused_hold_ms * MS), holding(HoldCause.NOT_ENABLED,
                                                    OperatingState.PAUSED))]
    # 10 mm/s until the hold, then 3 um of settling, then still.
    tips = [(t * MS, np.array([0.01 * min(t, hold_ms) * 1e-3
                               + (3e-6 if t >= hold_ms + 20 else 0.0), 0.0, 0.0]))
            for t in range(0, 2000, 10)]
    return decisions, tips


def test_trial_reaction_is_last_datagram_to_the_hold_on_paused():
    decisions, tips = held_arm(hold_ms=1050, paused_hold_ms=1110)
    figures = trial_figures(decisions, 1000 * MS, (1102 * MS, 998 * MS), tips, 1600 * MS)
    assert figures["reaction_ms"] == pytest.approx(112.0)
    assert figures["lost_ms"] == pytest.approx(104.0)
    assert figures["first_hold_ms"] == pytest.approx(52.0)
    # Motion counts from the tip at the first hold only: the 10 mm/s before it does not.
    assert figures["tip_motion_um"] == pytest.approx(3.0, abs=0.01)
    assert figures["paused_ms"] is None  # no PAUSED report from the supervisor
    # The supervisor's PAUSED reports: an earlier pause (before the LOST report) is not this
    # one; the first after the report is, repeated ones after it are not.
    split = trial_figures(decisions, 1000 * MS, (1102 * MS, 998 * MS), tips, 1600 * MS,
                          pauses=[500 * MS, 1105 * MS, 1205 * MS])
    assert split["paused_ms"] == pytest.approx(107.0)


def test_trial_is_excluded_when_the_arm_was_not_following_at_the_cut():
    decisions, tips = held_arm(hold_ms=950, paused_hold_ms=1110)  # a clutch before the cut
    figures = trial_figures(decisions, 1000 * MS, (1102 * MS, 998 * MS), tips, 1600 * MS)
    assert "commands stale" in figures["excluded"]
    no_decisions = trial_figures([], 1000 * MS, (1102 * MS, 998 * MS), tips, 1600 * MS)
    assert "no decision" in no_decisions["excluded"]


def test_trial_without_a_hold_on_paused_is_excluded():
    decisions, tips = held_arm(hold_ms=1050, paused_hold_ms=1110)
    figures = trial_figures(decisions[:-1], 1000 * MS, (1102 * MS, 998 * MS), tips,
                            1600 * MS)
    assert figures == {"excluded": "no hold on PAUSED"}


# -- end_to_end: detection on synthetic streams -------------------------------------------------

X, Y = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])


def ramp_stream(steps, latencies_ms, period_ms=2.0, span_ms=3000.0, ringing_m=10e-6):
    """A 500 Hz stream of tips: still but for a 10 Hz ringing of ringing_m on both axes, and
    each step's 1 mm move starting latency ms after it, over 3 samples (25 %, 70 %, 100 %)."""
    times = np.arange(0.0, span_ms, period_ms)
    tips = np.zeros((len(times), 3))
    tips[:, :2] = ringing_m * np.sin(2 * np.pi * 10.0 * times[:, None] * 1e-3)
    for (t, direction), latency in zip(steps, latencies_ms, strict=True):
        start = t / MS + latency
        fraction = np.interp(times, [start - 1e-9, start, start + 2 * period_ms],
                             [0.0, 0.25, 1.0], left=0.0, right=1.0)
        tips += 1e-3 * fraction[:, None] * direction
    return (times * MS).astype(np.int64), tips


def test_first_response_is_the_first_sample_past_the_threshold_along_the_step():
    steps = [(500 * MS, X), (1200 * MS, Y), (1900 * MS, -X)]
    latencies = [3.1, 7.9, 40.3]
    times, tips = ramp_stream(steps, latencies)
    found = first_responses(steps, times, tips, 20e-6, 200 * MS)
    for (t, _), index, latency in zip(steps, found, latencies, strict=True):
        assert index is not None
        measured = (times[index] - t) / MS
        assert latency <= measured < latency + 2.0  # the first 2 ms sample after the move


def test_no_response_outside_the_window_or_across_the_step():
    times, tips = ramp_stream([(500 * MS, Y)], [3.0])
    # A step along x while the stream moves along y: nothing (the 10 um ringing stays under).
    assert first_responses([(500 * MS, X)], times, tips, 20e-6, 200 * MS) == [None]
    # The response comes after the window.
    assert first_responses([(500 * MS, Y)], times, tips, 20e-6, 2 * MS) == [None]
    # No sample before the step: nothing to compare with.
    assert first_responses([(-5 * MS, Y)], times, tips, 20e-6, 200 * MS) == [None]
    # A move backwards is not the step.
    assert first_responses([(500 * MS, -Y)], times, tips, 20e-6, 200 * MS) == [None]


def test_step_latencies_split_into_stages_that_add_up():
    steps = [(1000 * MS, X), (2000 * MS, Y)]
    tip_before, tip_after = np.zeros(3), np.array([1e-3, 1e-3, 0.0])

    # Step 1: console stamp at +2, patient bridge publish at +5, command publish at +8,
    # its arrival at +8.5 ms. Step 2: the servo_cp the probe saw was published by the bridge
    # after the command (it missed the first one): end to end, but no split.
    servo = [(990 * MS, 991 * MS, tip_before), (1002 * MS, 1005 * MS, tip_after),
             (1990 * MS, 1991 * MS, tip_after), (2006 * MS, 2020 * MS, 2 * tip_after)]
    commands = [(998 * MS, 998 * MS + MS // 2, tip_before),
                (1008 * MS, int(1008.5 * MS), tip_after),
                (1998 * MS, 1999 * MS, tip_after),
                (2010 * MS, 2011 * MS, 2 * tip_after)]
    figures = step_latencies(steps, commands, servo, 20e-6, 200 * MS)
    assert figures["end_to_end_ms"] == pytest.approx([8.5, 11.0])
    assert figures["console_ms"][0] == pytest.approx(2.0)
    assert figures["bridges_ms"][0] == pytest.approx(3.0)
    assert figures["arm_ms"][0] == pytest.approx(3.0)
    assert figures["delivery_ms"] == pytest.approx([0.5, 1.0])
    assert sum(figures[s][0] for s in ("console_ms", "bridges_ms", "arm_ms", "delivery_ms")) \
        == pytest.approx(figures["end_to_end_ms"][0])
    assert figures["console_ms"][1] is None and figures["arm_ms"][1] is None


# -- end_to_end: detection on the console mapping and the arm controller ----------------------

def simulated_commands(delay_ms: float, steps: int):
    """The benchmark's master motion through TeleopMapping (250 Hz, tremor filter, 5:1) and an
    ArmController ticking at 500 Hz with an ideal arm, each servo goal arriving delay_ms after
    its master sample: the steps (sample time, direction) and the commands (time, tip). Both
    run as the nodes do, with their parameters' defaults."""
    mapping = TeleopMapping(TeleopConfig.defaults())
    controller = ArmController(ArmControllerConfig.defaults())
    # The time grid below, and the figures checked, are for these.
    assert (mapping.config.rate_hz, mapping.config.scale, controller.config.rate_hz) == (
        250.0, 0.2, 500.0)
    q = HOME_POSITIONS.copy()
    arm_pose = forward(q[:6])
    master = np.zeros(3)
    for present in (False, True):  # released, then pressed: engaged
        mapping.update(MasterInput(master, np.eye(3), 0.0, False, present), arm_pose, 0.0)
    step_times = [1.0 + i * STEP_INTERVAL_S for i in range(steps)]
    end_s = step_times[-1] + STEP_INTERVAL_S
    recorded_steps, in_flight, commands = [], [], []
    for k in range(int(end_s * 4000)):  # a 0.25 ms grid
        now = k * 0.25e-3
        if k % 16 == 0:  # a master sample
            if len(recorded_steps) < steps and now >= step_times[len(recorded_steps)]:
                direction = DIRECTIONS[len(recorded_steps) % len(DIRECTIONS)]
                master = master + STEP_M * direction
                recorded_steps.append((int(now * 1e9), direction))
            command = mapping.update(MasterInput(master, np.eye(3), 0.0, False, True),
                                     arm_pose, 0.0)
            assert command.following
            in_flight.append((now + delay_ms * 1e-3, command.goal))
        while in_flight and in_flight[0][0] <= now + 1e-12:
            assert controller.on_servo_cp(in_flight.pop(0)[1], now) == ""
        if k % 8 == 3:  # a control tick, out of phase with the master samples
            controller.on_operating_state("ENABLED", now)
            controller.on_joint_states(q, now)
            q = controller.tick(now)
            commands.append((int(now * 1e9), forward(q[:6])[:3, 3]))
    return recorded_steps, commands


@pytest.mark.parametrize("delay_ms", [1.0, 6.5])
def test_each_step_is_found_on_the_first_control_tick_after_its_goal_arrives(delay_ms):
    steps, commands = simulated_commands(delay_ms, steps=8)
    times = [t for t, _ in commands]
    found = first_responses(steps, times, [tip for _, tip in commands],
                            THRESHOLD_FRACTION * 0.2 * STEP_M, 200 * MS)
    assert None not in found
    latencies = [(times[i] - t) / MS for (t, _), i in zip(steps, found, strict=True)]
    # Never before the goal arrives (the ringing of earlier steps stays under the threshold),
    # and on the first 2 ms tick after it.
    assert all(delay_ms < latency <= delay_ms + 2.0 + 1e-6 for latency in latencies), latencies
