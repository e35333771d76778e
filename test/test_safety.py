"""Safety supervisor: every command in every state, every cause at and around its threshold,
resume (and enable) refused while each cause persists and accepted once it clears, faults, and
a property test over random input sequences.
"""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telesurg.arm.kinematics import ARM_JOINT_NAMES, HOME_POSITIONS
from telesurg.patient.safety import (
    FAULT_CAUSES,
    Cause,
    Command,
    CommandResult,
    OperatingState,
    SafetyConfig,
    SafetySupervisor,
    Transition,
)

DISABLED, ENABLED = OperatingState.DISABLED, OperatingState.ENABLED
PAUSED, FAULT = OperatingState.PAUSED, OperatingState.FAULT
LIMITS = [(-1.5, 1.5), (-0.9, 0.9), (0.0, 0.24)]
NAMES = ("yaw", "pitch", "insertion")
HOME = np.array([0.0, 0.0, 0.12])
TIP = np.zeros(3)
T0 = 1000.0  # a monotonic clock is far from 0
DEFAULTS = SafetyConfig.defaults()  # what the safety_supervisor node runs with
# The supervisor's own deadline arithmetic, so the edges below are exact.
COMMAND_TIMEOUT_S = DEFAULTS.command_timeout_ms * 1e-3
LINK_TIMEOUT_S = DEFAULTS.link_state_timeout_ms * 1e-3
PRESENCE_GRACE_S = DEFAULTS.presence_grace_ms * 1e-3
ARM_TIMEOUT_S = DEFAULTS.arm_timeout_ms * 1e-3
# The limits as the supervisor writes them in its figures.
COMMAND_TIMEOUT_MS = f"{DEFAULTS.command_timeout_ms:g}"
LINK_TIMEOUT_MS = f"{DEFAULTS.link_state_timeout_ms:g}"
ARM_TIMEOUT_MS = f"{DEFAULTS.arm_timeout_ms:g}"
COMMAND_CAUSES = {"enable": "enable command", "disable": "disable command",
                  "pause": Cause.OPERATOR, "resume": "resume command"}


def before(t):
    return math.nextafter(t, -math.inf)


def make(limits=LIMITS, **config):
    return SafetySupervisor(dataclasses.replace(DEFAULTS, **config), limits, NAMES[:len(limits)])


def healthy(sup, now, positions=HOME):
    """Fresh joint states and link state at now."""
    return sup.on_joint_states(now, positions) + sup.on_link_state(now, "REDUNDANT")


def ready(now=T0, **config):
    """DISABLED, every input healthy, the operator present, the console not following."""
    sup = make(**config)
    healthy(sup, now)
    sup.on_operator_present(now, True)
    assert sup.persisting_causes(now) == []
    return sup


def enabled(now=T0, **config):
    sup = ready(now, **config)
    assert sup.command(now, "enable").accepted
    return sup


def following(now=T0, tip=TIP, **config):
    """ENABLED, the console following, one command (the step reference) at now."""
    sup = enabled(now, **config)
    sup.on_following(now, True)
    sup.on_command(now, tip, 20.0)
    assert sup.state is ENABLED
    return sup


def paused(now=T0):
    sup = enabled(now)
    assert sup.command(now, "pause").accepted
    return sup


def faulted(now=T0):
    """FAULT from a NaN joint reading, the joint states healthy again since."""
    sup = enabled(now)
    sup.on_joint_states(now, [0.0, math.nan, 0.12])
    sup.on_joint_states(now, HOME)
    assert sup.state is FAULT
    return sup


IN_STATE = {DISABLED: ready, ENABLED: enabled, PAUSED: paused, FAULT: faulted}


def new_since(sup, count):
    return sup.transitions[count:]


# -- configuration -------------------------------------------------------------------------


def test_default_config_is_valid():
    assert DEFAULTS.warn_command_age_ms < DEFAULTS.max_command_age_ms
    assert SafetySupervisor(None, LIMITS).config == DEFAULTS


@pytest.mark.parametrize("field, value", [
    ("max_command_age_ms", 0.0), ("max_command_age_ms", math.inf),
    ("max_command_age_ms", math.nan), ("warn_command_age_ms", -1.0),
    ("warn_command_age_ms", 200.0), ("warn_command_age_ms", 250.0),
    ("command_timeout_ms", 0.0), ("command_timeout_ms", True), ("command_timeout_ms", "100"),
    ("link_state_timeout_ms", -5.0), ("link_state_timeout_ms", math.inf),
    ("step_limit_mm", 0.0), ("step_limit_mm", math.nan), ("max_tip_speed_m_s", 0.0),
    ("joint_limit_margin", 0.0), ("joint_limit_margin", 0.5), ("joint_limit_margin", -0.1),
    ("joint_limit_slack", -0.1), ("joint_limit_slack", 1.5),
    ("arm_timeout_ms", 0.0), ("arm_timeout_ms", None), ("presence_grace_ms", -1.0),
])
def test_config_rejects_invalid_values(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(DEFAULTS, **{field: value})


@pytest.mark.parametrize("limits", [[], [(0.0, 1.0, 2.0)], [(1.0, 1.0)], [(1.0, 0.0)],
                                    [(0.0, math.inf)], [(math.nan, 1.0)]])
def test_supervisor_rejects_invalid_joint_limits(limits):
    with pytest.raises(ValueError, match="joint_limits"):
        SafetySupervisor(None, limits)


def test_supervisor_rejects_joint_names_of_another_length():
    with pytest.raises(ValueError, match="joint_names"):
        SafetySupervisor(None, LIMITS, ("yaw",))


def test_for_arm_watches_the_six_arm_joints_not_the_jaw():
    sup = SafetySupervisor.for_arm()
    assert sup.joint_names == ARM_JOINT_NAMES
    sup.on_link_state(T0, "REDUNDANT")
    sup.on_joint_states(T0, HOME_POSITIONS[:6])
    assert sup.persisting_causes(T0) == []
    assert sup.warnings(T0) == []  # home is well inside every joint's range
    sup.on_joint_states(T0, HOME_POSITIONS)  # with the jaw: 7 values
    assert sup.fault_conditions(T0) == ["inconsistent joint states (7 values for 6 joints)"]


# -- start ---------------------------------------------------------------------------------


def test_starts_disabled_and_refuses_enable_until_link_and_arm_are_heard():
    sup = make()
    assert sup.state is DISABLED and sup.cause == "" and sup.transitions == []
    result = sup.command(T0, "enable")
    assert result == CommandResult(False, DISABLED, "enable refused: link lost (no "
                                   "/bridge/link_state yet), arm joint states stopped (none yet)",
                                   [])
    sup.on_link_state(T0, "REDUNDANT")
    assert sup.command(T0, "enable").reason == ("enable refused: arm joint states stopped "
                                                "(none yet)")
    sup.on_joint_states(T0, HOME)
    assert sup.command(T0, "enable").accepted
    assert sup.state is ENABLED


# -- the command table ---------------------------------------------------------------------

TABLE = [
    (DISABLED, "enable", True, ENABLED, "DISABLED -> ENABLED"),
    (DISABLED, "disable", True, DISABLED, "already DISABLED"),
    (DISABLED, "pause", False, DISABLED, "pause refused in DISABLED: only ENABLED pauses"),
    (DISABLED, "resume", False, DISABLED, "resume refused in DISABLED: only PAUSED resumes"),
    (ENABLED, "enable", True, ENABLED, "already ENABLED"),
    (ENABLED, "disable", True, DISABLED, "ENABLED -> DISABLED"),
    (ENABLED, "pause", True, PAUSED, "ENABLED -> PAUSED"),
    (ENABLED, "resume", False, ENABLED, "resume refused in ENABLED: only PAUSED resumes"),
    (PAUSED, "enable", False, PAUSED, "enable refused in PAUSED: use resume"),
    (PAUSED, "disable", True, DISABLED, "PAUSED -> DISABLED"),
    (PAUSED, "pause", True, PAUSED, "already PAUSED"),
    (PAUSED, "resume", True, ENABLED, "PAUSED -> ENABLED"),
    (FAULT, "enable", False, FAULT,
     "enable refused in FAULT: disable first (inconsistent joint states (pitch is nan))"),
    (FAULT, "disable", True, DISABLED, "FAULT -> DISABLED"),
    (FAULT, "pause", False, FAULT, "pause refused in FAULT: only ENABLED pauses"),
    (FAULT, "resume", False, FAULT, "resume refused in FAULT: only PAUSED resumes"),
    # Homing changes no state (the arm is homed from the start: absolute joint positions).
    (DISABLED, "home", True, DISABLED, "already homed"),
    (DISABLED, "unhome", True, DISABLED, "not homed: enable refused until home"),
    (ENABLED, "home", True, ENABLED, "already homed"),
    (ENABLED, "unhome", False, ENABLED, "unhome refused in ENABLED: disable first"),
    (PAUSED, "home", True, PAUSED, "already homed"),
    (PAUSED, "unhome", False, PAUSED, "unhome refused in PAUSED: disable first"),
    (FAULT, "home", True, FAULT, "already homed"),  # the condition has cleared: FAULT latches
    (FAULT, "unhome", True, FAULT, "not homed: enable refused until home"),
]


@pytest.mark.parametrize("state, command, accepted, after, reason", TABLE)
def test_command_table(state, command, accepted, after, reason):
    sup = IN_STATE[state]()
    assert sup.state is state
    now = T0 + 0.01
    count = len(sup.transitions)
    result = sup.command(now, command)
    assert (result.accepted, result.state, result.reason) == (accepted, after, reason)
    assert sup.state is after
    if after is state:
        assert result.transitions == [] and new_since(sup, count) == []
    else:
        expected = Transition(now, state, after, COMMAND_CAUSES[command],
                              result.transitions[0].detail)
        assert result.transitions == new_since(sup, count) == [expected]
        assert expected.detail and sup.cause == COMMAND_CAUSES[command]


def test_unhomed_arm_refuses_enable_until_home_and_home_needs_the_arm_heard():
    sup = ready()
    assert sup.is_homed
    assert sup.command(T0, "unhome").accepted and not sup.is_homed
    assert sup.command(T0, "enable").reason == ("enable refused: the arm is not homed: "
                                                "send home")
    assert sup.state is DISABLED
    result = sup.command(T0, "home")
    assert result.accepted and sup.is_homed and result.transitions == []
    assert result.reason == "homed (absolute joint positions: no homing motion)"
    assert sup.command(T0, "enable").accepted
    silent = make()  # no joint states yet: homing cannot be confirmed
    silent.command(T0, "unhome")
    assert silent.command(T0, "home").reason == ("home refused: arm joint states stopped "
                                                 "(none yet)")
    assert not silent.is_homed


def test_commands_may_be_given_as_command_members():
    sup = ready()
    assert sup.command(T0, Command.ENABLE).accepted
    assert sup.command(T0, Command.PAUSE).state is PAUSED


@pytest.mark.parametrize("command", ["Enable", "stop", "", " resume", None, 3])
def test_unknown_commands_are_refused_listing_the_valid_ones(command):
    for state, set_up in IN_STATE.items():
        sup = set_up()
        result = sup.command(T0, command)
        assert not result.accepted and sup.state is state and result.transitions == []
        assert result.reason == (f"unknown command {command!r}: valid commands are enable, "
                                 f"disable, home, unhome, pause, resume")


def test_disable_from_fault_says_enable_stays_refused_while_the_condition_persists():
    sup = enabled()
    sup.on_joint_states(T0, [0.0, math.nan, 0.12])
    result = sup.command(T0, "disable")
    assert result.accepted and sup.state is DISABLED
    assert result.transitions[0].detail == ("disable command; enable stays refused while: "
                                            "inconsistent joint states (pitch is nan)")
    refused = sup.command(T0, "enable")
    assert refused.reason == "enable refused: inconsistent joint states (pitch is nan)"
    sup.on_joint_states(T0, HOME)
    assert sup.command(T0, "enable").state is ENABLED


# -- conditions that persist: (cause, set up at t returning now, clear at now, text) ---------


def link_lost(sup, t):
    sup.on_link_state(t, "LOST")
    return t


def link_unknown(sup, t):
    sup.on_link_state(t, "DEGRADED")  # not an overall state: fail safe
    return t


def link_silent(sup, t):
    now = t + LINK_TIMEOUT_S
    sup.on_joint_states(now, HOME)
    return now


def stream_stale(sup, t):
    sup.on_following(t, True)
    now = t + COMMAND_TIMEOUT_S
    healthy(sup, now)
    return now


def command_too_old(sup, t):
    sup.on_command(t, TIP, 250.0)
    return t


def presence_lost(sup, t):
    sup.on_operator_present(t, False)  # not following yet: no event
    sup.on_following(t, True)  # a console following without the operator
    sup.on_command(t, TIP, 20.0)
    middle = t + PRESENCE_GRACE_S / 2
    healthy(sup, middle)
    sup.on_command(middle, TIP, 20.0)
    now = t + PRESENCE_GRACE_S  # the console's own stop did not come in time
    sup.on_command(now, TIP, 20.0)
    return now


def nan_joints(sup, t):
    sup.on_joint_states(t, [0.0, math.nan, 0.12])
    return t


def inf_joints(sup, t):
    sup.on_joint_states(t, [0.0, 0.0, math.inf])
    return t


def wrong_length(sup, t):
    sup.on_joint_states(t, [0.0, 0.0, 0.12, 0.0])
    return t


def matrix_joints(sup, t):
    sup.on_joint_states(t, [[0.0, 0.0, 0.12]])
    return t


def arm_silent(sup, t):
    now = t + ARM_TIMEOUT_S
    sup.on_link_state(now, "REDUNDANT")
    return now


def link_back(sup, now):
    sup.on_link_state(now, "REDUNDANT")


def fresh_command(sup, now):
    sup.on_command(now, TIP, 50.0)


def stop_following(sup, now):
    sup.on_following(now, False)


def operator_back(sup, now):
    sup.on_operator_present(now, True)


def joints_back(sup, now):
    sup.on_joint_states(now, HOME)


PAUSE_CONDITIONS = [
    (Cause.LINK_LOST, link_lost, link_back, "link lost (overall LOST)"),
    (Cause.LINK_LOST, link_unknown, link_back, "link lost (overall DEGRADED)"),
    (Cause.LINK_LOST, link_silent, link_back,
     f"link lost (no /bridge/link_state for {LINK_TIMEOUT_MS} ms, limit {LINK_TIMEOUT_MS} ms)"),
    (Cause.COMMAND_STALE, stream_stale, fresh_command,
     f"command stream stale (no command for {COMMAND_TIMEOUT_MS} ms while following, limit "
     f"{COMMAND_TIMEOUT_MS} ms)"),
    (Cause.COMMAND_STALE, stream_stale, stop_following,
     f"command stream stale (no command for {COMMAND_TIMEOUT_MS} ms while following, limit "
     f"{COMMAND_TIMEOUT_MS} ms)"),
    (Cause.COMMAND_AGE, command_too_old, fresh_command, "command too old (250 ms > 200 ms)"),
    (Cause.PRESENCE_LOST, presence_lost, operator_back,
     "operator presence lost while following"),
    (Cause.PRESENCE_LOST, presence_lost, stop_following,
     "operator presence lost while following"),
]
FAULT_CONDITIONS = [
    (Cause.INCONSISTENT_JOINTS, nan_joints, joints_back,
     "inconsistent joint states (pitch is nan)"),
    (Cause.INCONSISTENT_JOINTS, inf_joints, joints_back,
     "inconsistent joint states (insertion is inf)"),
    (Cause.INCONSISTENT_JOINTS, wrong_length, joints_back,
     "inconsistent joint states (4 values for 3 joints)"),
    (Cause.INCONSISTENT_JOINTS, matrix_joints, joints_back,
     "inconsistent joint states (3 values for 3 joints)"),
    (Cause.ARM_SILENT, arm_silent, joints_back,
     f"arm joint states stopped (none for {ARM_TIMEOUT_MS} ms, limit {ARM_TIMEOUT_MS} ms)"),
]


def ids(conditions):
    return [f"{set_up.__name__}-{clear.__name__}" for _, set_up, clear, _ in conditions]


@pytest.mark.parametrize("cause, set_up, clear, text", PAUSE_CONDITIONS,
                         ids=ids(PAUSE_CONDITIONS))
def test_each_pause_cause_pauses_and_refuses_resume_until_it_clears(cause, set_up, clear, text):
    sup = enabled()
    t = T0 + 0.01
    healthy(sup, t)
    assert sup.state is ENABLED
    now = set_up(sup, t)
    assert sup.state is PAUSED
    last = sup.transitions[-1]
    assert (last.previous, last.current, last.cause, last.detail) == (ENABLED, PAUSED, cause, text)
    assert sup.persisting_causes(now) == [text]
    result = sup.command(now, "resume")
    still_following = (", the console is still following: it must stop, then re-engage"
                       if sup._following else "")
    assert result == CommandResult(False, PAUSED, f"resume refused: {text}{still_following}",
                                   [])
    assert sup.command(now, "enable").state is PAUSED
    clear(sup, now)
    assert sup.state is PAUSED  # the cause is gone, the pause waits for resume
    assert sup.persisting_causes(now) == []
    if sup._following:  # the console has not stopped yet: no resume into its motion
        assert sup.command(now, "resume").reason == (
            "resume refused: the console is still following: it must stop, then re-engage")
        sup.on_following(now, False)
    result = sup.command(now, "resume")
    assert result.accepted and sup.state is ENABLED
    assert result.transitions[-1].cause == "resume command"


@pytest.mark.parametrize("cause, set_up, clear, text", PAUSE_CONDITIONS + FAULT_CONDITIONS,
                         ids=ids(PAUSE_CONDITIONS + FAULT_CONDITIONS))
def test_each_condition_refuses_enable_until_it_clears_without_moving_disabled(
        cause, set_up, clear, text):
    sup = ready()
    t = T0 + 0.01
    healthy(sup, t)
    now = set_up(sup, t)
    assert sup.state is DISABLED and sup.transitions == []
    assert sup.persisting_causes(now) == [text]
    assert (cause in FAULT_CAUSES) == (sup.fault_conditions(now) == [text])
    still_following = (", the console is still following: it must stop, then re-engage"
                       if sup._following else "")
    assert sup.command(now, "enable") == CommandResult(
        False, DISABLED, f"enable refused: {text}{still_following}", [])
    clear(sup, now)
    sup.on_following(now, False)  # a console that follows while DISABLED must stop first
    assert sup.command(now, "enable").state is ENABLED


@pytest.mark.parametrize("cause, set_up, clear, text", FAULT_CONDITIONS,
                         ids=ids(FAULT_CONDITIONS))
@pytest.mark.parametrize("start", [ENABLED, PAUSED])
def test_each_fault_condition_faults_enabled_and_paused_and_latches(start, cause, set_up, clear,
                                                                    text):
    sup = IN_STATE[start]()
    t = T0 + 0.01
    healthy(sup, t)
    now = set_up(sup, t)
    assert sup.state is FAULT
    last = sup.transitions[-1]
    assert (last.previous, last.current, last.cause, last.detail) == (start, FAULT, cause, text)
    clear(sup, now)
    healthy(sup, now + 0.05)
    assert sup.update(now + 0.05) == [] and sup.state is FAULT  # needs a person
    assert sup.command(now + 0.05, "enable").reason == f"enable refused in FAULT: disable first " \
                                                       f"({text})"
    assert sup.command(now + 0.05, "disable").state is DISABLED
    assert sup.command(now + 0.05, "enable").state is ENABLED


def test_several_persisting_causes_are_all_named():
    sup = following()
    sup.on_link_state(T0, "LOST")
    sup.on_command(T0, TIP, 250.0)
    assert sup.transitions[-1].cause == Cause.LINK_LOST
    assert sup.command(T0, "resume").reason == (
        "resume refused: link lost (overall LOST), command too old (250 ms > 200 ms), the "
        "console is still following: it must stop, then re-engage")


def test_causes_found_together_are_recorded_together():
    sup = following()
    now = T0 + max(LINK_TIMEOUT_S, COMMAND_TIMEOUT_S)
    assert now < T0 + ARM_TIMEOUT_S
    sup.on_joint_states(now, HOME)  # the link silent, the stream stale: one transition
    (transition,) = sup.transitions[-1:]
    silence = f"{(now - T0) * 1e3:g}"
    assert transition.cause == "link lost, command stream stale"
    assert transition.detail == (
        f"link lost (no /bridge/link_state for {silence} ms, limit {LINK_TIMEOUT_MS} ms); "
        f"command stream stale (no command for {silence} ms while following, "
        f"limit {COMMAND_TIMEOUT_MS} ms)")


def test_fault_takes_precedence_over_pause_causes():
    sup = enabled()
    now = T0 + max(ARM_TIMEOUT_S, LINK_TIMEOUT_S)  # the arm and the link both silent
    assert [(t.current, t.cause) for t in sup.update(now)] == [(FAULT, Cause.ARM_SILENT)]


def test_fault_ignores_pause_causes():
    sup = faulted()
    assert sup.on_link_state(T0, "LOST") == [] and sup.state is FAULT


# -- each cause at and around its threshold ------------------------------------------------


@pytest.mark.parametrize("age_ms, cause", [
    (199.9, None), (200.0, None), (200.001, Cause.COMMAND_AGE), (math.inf, Cause.COMMAND_AGE),
    (3_600_000.0, Cause.COMMAND_AGE), (None, None), (math.nan, None), (-5.0, None),
    (-20.0, None), (-20.001, Cause.COMMAND_STAMP), (-3_600_000.0, Cause.COMMAND_STAMP),
])
def test_command_age_limit(age_ms, cause):
    """An age over the limit pauses, and so does a stamp further ahead of this clock than the
    clocks may disagree (an hour in the future used to pass as a negative age)."""
    assert DEFAULTS.max_clock_skew_ms == 20.0  # the thresholds above
    sup = following()
    transitions = sup.on_command(T0, TIP, age_ms)
    assert sup.state is (PAUSED if cause else ENABLED)
    if cause:
        assert transitions == sup.transitions[-1:]
        assert transitions[0].cause == cause


def test_a_command_stamped_in_the_future_says_by_how_much():
    sup = following()
    sup.on_command(T0, TIP, -3_600_000.0)
    assert sup.transitions[-1].detail == (
        "command stamped in the future (3.6e+06 ms ahead of this clock, more than the 20 ms the "
        "clocks may disagree)")


@pytest.mark.parametrize("age_ms, warning", [
    (100.0, None), (100.5, "command age 100.5 ms above the warning level 100 ms"),
    (200.0, "command age 200 ms above the warning level 100 ms"),
    (None, "command age unknown: the one-way age limit is not checked"),
])
def test_command_age_warning(age_ms, warning):
    sup = enabled()
    sup.on_command(T0, TIP, age_ms)
    assert sup.warnings(T0) == ([warning] if warning else [])
    assert sup.warnings(T0 + COMMAND_TIMEOUT_S) == []  # no stream, nothing old acted on


def test_command_age_no_longer_persists_once_the_stream_stops():
    sup = following()
    sup.on_command(T0, TIP, 250.0)
    sup.on_following(T0, False)
    assert sup.state is PAUSED
    now = before(T0 + COMMAND_TIMEOUT_S)
    healthy(sup, now)
    assert sup.command(now, "resume").reason == "resume refused: command too old (250 ms > 200 ms)"
    now = T0 + COMMAND_TIMEOUT_S
    healthy(sup, now)
    assert sup.command(now, "resume").state is ENABLED


@pytest.mark.parametrize("step_m, pauses", [(0.002, False), (0.00201, True),
                                            (0.00199, False), (math.nan, True)])
def test_step_limit(step_m, pauses):
    sup = following()  # the reference at the origin
    sup.on_command(T0, [step_m, 0.0, 0.0], 20.0)
    assert sup.state is (PAUSED if pauses else ENABLED)
    if pauses:
        assert sup.cause == Cause.STEP_LIMIT
        expected = "non-finite tip position" if math.isnan(step_m) else "2.01 mm > 2 mm"
        assert sup.transitions[-1].detail == f"{Cause.STEP_LIMIT} ({expected})"


def test_steps_add_up_from_the_previous_command_not_the_first():
    sup = following()
    for i in range(1, 11):  # 1.5 mm steps, 15 mm in all
        sup.on_command(T0, [0.0015 * i, 0.0, 0.0], 20.0)
    assert sup.state is ENABLED
    sup.on_command(T0, [0.0015 * 10 + 0.0025, 0.0, 0.0], 20.0)
    assert sup.state is PAUSED


def test_step_reference_resets_when_following_stops():
    sup = following()
    sup.on_following(T0, False)
    sup.on_command(T0, [0.05, 0.0, 0.0], 20.0)  # not following: no step measured
    sup.on_following(T0, True)
    sup.on_command(T0, [0.01, 0.0, 0.0], 20.0)  # re-engaged: re-captures, no step
    assert sup.state is ENABLED
    sup.on_command(T0, [0.0105, 0.0, 0.0], 20.0)
    assert sup.state is ENABLED
    sup.on_command(T0, [0.0135, 0.0, 0.0], 20.0)  # measured again from here: 3 mm
    assert sup.state is PAUSED and sup.cause == Cause.STEP_LIMIT


def test_step_reference_resets_on_a_clutch_without_commands_in_between():
    sup = following()
    sup.on_following(T0, False)
    sup.on_following(T0, True)
    sup.on_command(T0, [0.01, 0.0, 0.0], 20.0)
    assert sup.state is ENABLED


def test_step_reference_resets_when_the_state_leaves_enabled():
    sup = following()
    sup.command(T0, "pause")
    sup.on_following(T0, False)  # the console stops, the operator resumes, the console engages
    assert sup.command(T0 + 0.01, "resume").state is ENABLED
    sup.on_following(T0 + 0.01, True)
    sup.on_command(T0 + 0.02, [0.01, 0.0, 0.0], 20.0)  # first after resume: no step
    assert sup.state is ENABLED
    sup.command(T0 + 0.02, "pause")
    sup.on_command(T0 + 0.03, [0.05, 0.0, 0.0], 20.0)  # while PAUSED: no step measured
    assert sup.state is PAUSED
    sup.on_following(T0 + 0.03, False)
    assert sup.command(T0 + 0.03, "resume").state is ENABLED
    sup.on_following(T0 + 0.03, True)
    sup.on_command(T0 + 0.04, [0.04, 0.0, 0.0], 20.0)
    assert sup.state is ENABLED


def test_a_single_forged_step_does_not_block_resume_but_the_pause_waits_for_it():
    sup = following()
    sup.on_command(T0, [0.01, 0.0, 0.0], 20.0)
    assert sup.state is PAUSED
    sup.on_following(T0, False)
    for i in range(1, 11):
        now = T0 + 0.05 * i
        assert healthy(sup, now) == []
    assert sup.update(now) == [] and sup.state is PAUSED
    assert sup.persisting_causes(now) == []
    assert sup.command(now, "resume").state is ENABLED


def test_stream_stale_deadline_and_next_deadline():
    sup = following()
    heard = T0 + COMMAND_TIMEOUT_S / 2
    healthy(sup, heard)
    deadline = T0 + COMMAND_TIMEOUT_S
    assert sup.next_deadline(heard) == deadline
    assert sup.update(before(deadline)) == []
    (transition,) = sup.update(deadline)
    assert (transition.current, transition.cause) == (PAUSED, Cause.COMMAND_STALE)


def test_stream_stale_counts_from_the_start_of_following():
    sup = enabled()
    sup.on_command(T0, TIP, 20.0)
    start = T0 + 0.05
    healthy(sup, start)
    sup.on_following(start, True)
    healthy(sup, start + 0.06)
    assert sup.update(before(start + COMMAND_TIMEOUT_S)) == []
    assert sup.update(start + COMMAND_TIMEOUT_S)[0].cause == Cause.COMMAND_STALE


def test_no_commands_while_not_following_is_not_stale():
    sup = following()
    sup.on_following(T0, False)  # clutched: commands stop by design
    for i in range(1, 11):
        now = T0 + 0.05 * i
        healthy(sup, now)
    assert sup.state is ENABLED and sup.persisting_causes(T0 + 0.5) == []


@pytest.mark.parametrize("overall, pauses, warnings", [
    ("REDUNDANT", False, []), ("SINGLE", False, ["link SINGLE: no redundancy left"]),
    ("LOST", True, []), ("", True, []),
])
def test_link_overall_state(overall, pauses, warnings):
    sup = enabled()
    sup.on_link_state(T0, overall)
    assert sup.state is (PAUSED if pauses else ENABLED)
    assert sup.warnings(T0) == warnings


def test_link_state_silence_is_link_lost_at_the_timeout():
    sup = enabled()
    for now in (T0 + 0.45 * LINK_TIMEOUT_S, T0 + 0.9 * LINK_TIMEOUT_S):
        sup.on_joint_states(now, HOME)  # the arm keeps reporting
    assert sup.next_deadline(now) == T0 + LINK_TIMEOUT_S
    assert sup.update(before(T0 + LINK_TIMEOUT_S)) == []
    (transition,) = sup.update(T0 + LINK_TIMEOUT_S)
    assert (transition.current, transition.cause) == (PAUSED, Cause.LINK_LOST)


def test_arm_silence_is_a_fault_at_the_timeout():
    sup = enabled()
    deadline = T0 + ARM_TIMEOUT_S
    for now in np.arange(T0, deadline, LINK_TIMEOUT_S / 2):
        sup.on_link_state(now, "REDUNDANT")  # the link stays up
    assert sup.state is ENABLED
    assert sup.next_deadline(now) == deadline
    assert sup.update(before(deadline)) == []
    (transition,) = sup.update(deadline)
    assert (transition.current, transition.cause) == (FAULT, Cause.ARM_SILENT)


def test_next_deadline():
    sup = ready()
    assert sup.next_deadline(T0) is None  # DISABLED: no timeout changes the state
    sup.command(T0, "pause")
    sup.command(T0, "enable")
    sup.command(T0, "pause")
    assert sup.state is PAUSED and sup.next_deadline(T0) == T0 + ARM_TIMEOUT_S
    assert faulted().next_deadline(T0) is None
    late = enabled()
    assert late.next_deadline(T0 + 1.0) == T0 + 1.0  # overdue: now


def test_presence_lost_only_while_following_past_the_grace():
    grace_s = PRESENCE_GRACE_S
    # Shorter than the other timeouts, so that only this cause can trip.
    assert grace_s < min(COMMAND_TIMEOUT_S, LINK_TIMEOUT_S)
    sup = enabled()
    sup.on_operator_present(T0, False)
    assert sup.state is ENABLED  # not following: nothing moves anyway
    sup.on_following(T0, True)  # a console following without the operator
    assert sup.next_deadline(T0) == T0 + grace_s
    sup.update(math.nextafter(T0 + grace_s, 0.0))
    assert sup.state is ENABLED
    sup.update(T0 + grace_s)
    assert sup.state is PAUSED and sup.cause == Cause.PRESENCE_LOST
    # An engage: "following" crossing the bridge before "present" is no cause.
    sup = enabled()
    sup.on_operator_present(T0, False)
    sup.on_following(T0 + 0.01, True)
    sup.on_command(T0 + 0.01, TIP, 20.0)
    sup.on_operator_present(T0 + 0.01 + grace_s / 2, True)
    later = T0 + 0.01 + 1.5 * grace_s
    healthy(sup, later)
    sup.on_command(later, TIP, 20.0)
    sup.update(later)
    assert sup.state is ENABLED
    # The pedal released while following pauses at once, even if the console's report that it
    # stopped following comes right after.
    sup = following()
    sup.on_operator_present(T0 + 0.01, False)
    assert sup.state is PAUSED and sup.cause == Cause.PRESENCE_LOST
    assert "released while following" in sup.transitions[-1].detail
    sup.on_following(T0 + 0.02, False)
    assert sup.persisting_causes(T0 + 0.02) == []  # resume allowed; re-engage needs a press
    # The console's stop and the release cross the bridge in either order: a release just
    # after the stop was still a release while following; one well after it is not.
    sup = following()
    sup.on_following(T0, False)
    sup.on_operator_present(T0 + 0.5 * grace_s, False)
    assert sup.state is PAUSED and sup.cause == Cause.PRESENCE_LOST
    sup = following()
    sup.on_following(T0, False)
    sup.on_operator_present(T0 + 0.01 + grace_s, False)
    assert sup.state is ENABLED
    # Both links cut: the console stopped following during the outage and its report arrives
    # with the links' return, long after the last command; the operator's release that follows
    # (re-pressing the pedal to engage again) is no release while following.
    sup = following()
    outage_s = 1.0
    sup.on_link_state(T0 + 0.01, "LOST")
    assert sup.state is PAUSED
    healthy(sup, T0 + outage_s)
    sup.on_following(T0 + outage_s, False)
    assert sup.command(T0 + outage_s, "resume").accepted
    sup.on_operator_present(T0 + outage_s + 0.5 * grace_s, False)
    assert sup.state is ENABLED


# Joint ranges of 8 with a margin of 1/8: a margin of exactly 1.0, edges without round-off.
WIDE = [(-4.0, 4.0), (-4.0, 4.0)]


@pytest.mark.parametrize("positions, pauses", [
    ([3.0, -3.0], False), ([math.nextafter(3.0, 4.0), 0.0], True),
    ([0.0, math.nextafter(-3.0, -4.0)], True), ([4.5, 0.0], True), ([0.0, 0.0], False),
])
def test_joint_limit_margin(positions, pauses):
    sup = make(WIDE, joint_limit_margin=0.125)
    healthy(sup, T0, [0.0, 0.0])
    sup.on_operator_present(T0, True)
    assert sup.command(T0, "enable").accepted
    sup.on_joint_states(T0, positions)
    assert sup.state is (PAUSED if pauses else ENABLED)
    if pauses:
        assert sup.cause == Cause.JOINT_LIMIT
        assert sup.transitions[-1].detail.startswith(f"{Cause.JOINT_LIMIT} (")
        assert sup.persisting_causes(T0) == []  # the paused arm holds: it could never clear
        assert sup.command(T0, "resume").state is ENABLED


def test_joint_limit_detail_and_warning_give_the_figures():
    sup = make(WIDE, joint_limit_margin=0.125)
    healthy(sup, T0, [0.0, 0.0])
    sup.command(T0, "enable")
    sup.on_joint_states(T0, [0.0, -3.5])
    text = "pitch at -3.5, 0.5 from its lower limit -4, margin 1"
    assert sup.transitions[-1].detail == f"arm near a joint limit ({text})"
    assert sup.warnings(T0) == [f"arm near a joint limit: {text}"]


def test_a_joint_inside_the_margin_may_move_out_but_not_deeper():
    sup = make(WIDE, joint_limit_margin=0.125, joint_limit_slack=0.1)
    healthy(sup, T0, [3.5, 0.0])  # 0.5 inside the margin
    sup.on_operator_present(T0, True)
    assert sup.command(T0, "enable").state is ENABLED  # not a persisting cause
    sup.on_joint_states(T0, [3.55, 0.0])  # within the slack (0.1): noise while holding
    assert sup.state is ENABLED
    sup.on_joint_states(T0, [3.2, 0.0])  # moving out narrows what is allowed...
    sup.on_joint_states(T0, [3.35, 0.0])  # ...so going back 0.15 deeper pauses
    assert sup.state is PAUSED and sup.cause == Cause.JOINT_LIMIT
    assert sup.command(T0, "resume").state is ENABLED
    sup.on_joint_states(T0, [2.9, 0.0])  # out of the margin...
    sup.on_joint_states(T0, [3.05, 0.0])  # ...and back in: pauses at the margin
    assert sup.state is PAUSED


def test_joint_limit_is_not_watched_outside_enabled():
    sup = paused()
    sup.on_joint_states(T0, [1.5, 0.0, 0.12])
    assert sup.state is PAUSED and len(sup.transitions) == 2


# -- records -------------------------------------------------------------------------------


def test_transitions_is_a_copy_of_the_history():
    sup = paused()
    history = sup.transitions
    history.clear()
    assert [(t.previous, t.current) for t in sup.transitions] == [(DISABLED, ENABLED),
                                                                  (ENABLED, PAUSED)]
    assert sup.cause == Cause.OPERATOR


def test_on_command_rejects_a_tip_of_the_wrong_shape():
    with pytest.raises(ValueError, match="tip_position"):
        enabled().on_command(T0, [0.0, 0.0], 20.0)


# -- property: random inputs and commands --------------------------------------------------

_INPUTS = st.one_of(
    st.tuples(st.just("link"), st.sampled_from(["REDUNDANT", "SINGLE", "LOST", "BOGUS"])),
    st.tuples(st.just("command"),
              st.sampled_from([0.0, 0.0015, -0.0015, 0.003, math.nan]),
              st.sampled_from([None, 20.0, 150.0, 250.0, math.nan])),
    st.tuples(st.just("following"), st.booleans()),
    st.tuples(st.just("present"), st.booleans()),
    st.tuples(st.just("joints"), st.sampled_from(["home", "home", "near", "nan", "short"])),
    st.tuples(st.just("update")),
    st.tuples(st.just("state_command"),
              st.sampled_from(["enable", "resume", "enable", "resume", "disable", "pause",
                               "home", "unhome", "bogus"])),
)
_JOINTS = {"home": HOME, "near": [1.49, 0.0, 0.12], "nan": [math.nan, 0.0, 0.12],
           "short": [0.0, 0.0]}
# Mostly short steps, so the timeouts are crossed now and then, not at every step.
_STEPS = st.sampled_from([0.0, 0.001, 0.001, 0.02, 0.02, 0.6 * COMMAND_TIMEOUT_S,
                          1.1 * COMMAND_TIMEOUT_S, 1.25 * LINK_TIMEOUT_S, 1.1 * ARM_TIMEOUT_S])
_FRESH = st.sampled_from([True, True, True, False])  # the sensors report before the step


def _apply(sup, now, step, tip):
    """One input or command; returns (transitions made, CommandResult or None)."""
    kind = step[0]
    if kind == "link":
        return sup.on_link_state(now, step[1]), None
    if kind == "command":
        return sup.on_command(now, tip, step[2]), None
    if kind == "following":
        return sup.on_following(now, step[1]), None
    if kind == "present":
        return sup.on_operator_present(now, step[1]), None
    if kind == "joints":
        return sup.on_joint_states(now, _JOINTS[step[1]]), None
    if kind == "update":
        return sup.update(now), None
    result = sup.command(now, step[1])
    assert result.state is sup.state and result.reason
    return result.transitions, result


def _check(sup, now, step, state_before, count, made, result):
    assert made == new_since(sup, count)
    accepted = result.accepted if result is not None else False
    previous = state_before
    for transition in made:
        assert transition.cause and transition.detail and transition.time == now
        assert transition.previous is previous and transition.current is not previous
        previous = transition.current
        if transition.current is ENABLED:
            # Only an accepted enable (from DISABLED) or resume (from PAUSED) enables.
            expected = {DISABLED: "enable", PAUSED: "resume"}[transition.previous]
            assert accepted and step == ("state_command", expected)
            assert transition.cause == f"{expected} command"
        if transition.previous is FAULT:
            assert accepted and step == ("state_command", "disable")
    if sup.state is ENABLED:
        # Every input is evaluated at once: ENABLED never outlives a cause.
        assert sup.persisting_causes(now) == []
    if sup.state in (ENABLED, PAUSED):  # an arm that may move is always homed
        assert sup.is_homed


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(_STEPS, _FRESH, _INPUTS), min_size=10, max_size=60))
def test_random_sequences_keep_the_safety_contract(steps):
    sup = ready()
    now = T0
    tip = np.zeros(3)
    for dt, fresh, step in steps:
        now += dt
        calls = [("joints", "home"), ("link", "REDUNDANT")] if fresh else []
        for call in calls + [step]:
            if call[0] == "command":
                tip = tip + [call[1], 0.0, 0.0]
            state_before, count = sup.state, len(sup.transitions)
            made, result = _apply(sup, now, call, tip)
            _check(sup, now, call, state_before, count, made, result)


@pytest.mark.parametrize("tip_speed_m_s", [DEFAULTS.max_tip_speed_m_s,
                                           2 * DEFAULTS.max_tip_speed_m_s])
@pytest.mark.parametrize("beyond_mm, pauses", [(-0.1, False), (0.1, True)])
def test_a_gap_in_the_stream_widens_the_step_limit_by_the_tip_speed_cap(tip_speed_m_s,
                                                                        beyond_mm, pauses):
    """50 ms without commands (lost on the way): the arm may have been sent the tip speed cap
    (the arm controller's max_tip_speed_m_s) x 50 ms further, on top of the step limit."""
    sup = following(max_tip_speed_m_s=tip_speed_m_s)
    gap_s = 0.05
    step_mm = DEFAULTS.step_limit_mm + tip_speed_m_s * 1e3 * gap_s + beyond_mm
    healthy(sup, T0 + gap_s)
    sup.on_command(T0 + gap_s, np.asarray(TIP) + [step_mm * 1e-3, 0.0, 0.0], 20.0)
    assert (sup.state is PAUSED) == pauses
