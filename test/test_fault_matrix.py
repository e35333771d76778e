"""Multi-process fault matrix over real processes: a full two-site session (session_harness.py,
the same processes as `telesurg demo`) per case or shared by several, a fault injected while the
console follows the virtual surgeon, and for every case:

  1. the supervisor PAUSES within the deadline (for the supervisor killed: the arm controller
     holds on its own, "holding: safety supervisor silent");
  2. the arm moves less than 0.1 mm while paused (measured_cp from 100 ms after the arm
     controller commanded the hold, once the servo has absorbed the tip's momentum; from the
     hold itself it is printed too, and held to a generous 0.25 mm), and its joint commands do
     not change at all;
  3. after the cause clears and the operator resumes (`resume` at the master site), the arm does
     not move until the console re-engages, and the arm controller starts following only on the
     console's first command after the re-engage;
  4. re-engaging does not jump: the largest tip step between consecutive joint commands in the
     500 ms after the re-engage is under 0.5 mm, and the console's first goal is where the arm
     was held.

The design deadlines (link loss to hold: link timeout + 10-20 ms) are printed next to the
measured figures; on this shared 2-core machine, where a process stalls 50-70 ms now and then,
the asserted bounds are generous (1 s) but still catch a fault that is not acted on.

A case whose first pause after the injection names another cause (on this machine a stall
reads as a stale stream or a silent link), or that did not pause because a clutch of the virtual
surgeon coincided with the injection, is tried again (at most 3 attempts, printed). A fault that
is not acted on fails at once.
"""

from __future__ import annotations

import contextlib
import json
import time

import numpy as np
import pytest
import yaml
from session_harness import (
    FOLLOWING,
    MS,
    NetnsUnavailable,
    Session,
    displacement,
    forged_pose,
    ms,
    overall_state,
    steps,
)

from telesurg.bridge.config import default_bridge_config_path

# A whole two-site session per case on a shared 2-core machine: now and then a process stalls
# for a second (discovery, a starved node) and a case times out waiting for the console to
# engage. Such a case runs again, at most twice; a fault not acted on fails every time.
# Tier (setup.cfg markers): whole two-site sessions as processes; the namespace test needs
# root too.
pytestmark = pytest.mark.multiprocess

PAUSE_WITHIN_MS = 1000.0  # generous: the design figures are printed
# Generous too: a killed peer is noticed within the design's timeouts (at most 250 ms); with
# Fast DDS's shared memory (no longer in use: config/fastdds_profile.xml) the other processes
# of its domain stalled for 1-2 s after a SIGKILL now and then.
KILLED_PEER_WITHIN_MS = 1500.0
HELD_MOTION_MM = 0.1  # from 100 ms after the hold was commanded
HELD_RAW_MOTION_MM = 0.25  # from the hold itself (0.05 mm at most seen so far)
COMMANDED_HOLD_MM = 1e-6  # the joint command does not change at all while held
ENGAGE_OFFSET_MM = 0.25
JUMP_MM = 0.5
SETTLE_NS = 100 * MS
RE_ENGAGE_WINDOW_NS = 500 * MS
OBSERVE_NS = 1000 * MS
ATTEMPTS = 3
#: The design deadlines the figures are compared with (config/telesurg.yaml, config/bridge.yaml,
#: which the sessions' bridges use).
LINK_TIMEOUT_MS = float(yaml.safe_load(default_bridge_config_path().read_text())
                        ["link_timeout_ms"])
LINK_STATE_TIMEOUT_MS = 300.0
SUPERVISOR_TIMEOUT_MS = 250.0
COMMAND_TIMEOUT_MS = 50.0
MAX_COMMAND_AGE_MS = 200.0


def mm(metres: float) -> float:
    return metres * 1000.0


@contextlib.contextmanager
def session_or_skip(out, **options):
    try:
        session = Session(out, **options).__enter__()
    except NetnsUnavailable as error:
        pytest.skip(f"network namespaces: {error}")
    try:
        yield session
    finally:
        session.close()
    assert not session.unclean_exits(), (f"nodes did not stop cleanly: "
                                         f"{session.unclean_exits()} (see {out / 'logs'})")


class SharedSession:
    """One session on the lan profile for the cases that leave it healthy (each starts by
    bringing it back to ENABLED and following); replaced by a new one if a case left it where
    it cannot engage, so that one failure does not fail the cases after it."""

    def __init__(self, tmp_path_factory):
        self._tmp_path_factory = tmp_path_factory
        self.session: Session | None = None
        self.problems: list[str] = []

    def get(self) -> Session:
        if self.session is not None:
            try:
                self.session.engage(timeout_s=20.0)
                return self.session
            except AssertionError as error:
                print(f"\n  the shared session cannot engage ({error}); starting a new one")
                self._close()
        self.session = Session(self._tmp_path_factory.mktemp("lan_session")).__enter__()
        return self.session

    def _close(self) -> None:
        session, self.session = self.session, None
        died = session.dead()
        session.close()
        if died:
            self.problems.append(f"{session.out}: {died}")
        if session.unclean_exits():
            self.problems.append(f"{session.out}: nodes did not stop cleanly: "
                                 f"{session.unclean_exits()}")

    def suspend(self) -> None:
        """Stop the shared session, if one runs, for a case with a session of its own: two
        sessions on 2 cores slowed each other's start past 50 s and their timing past the
        design figures (the next get() starts a new one)."""
        if self.session is not None:
            self._close()

    def close(self) -> None:
        self.suspend()
        assert not self.problems, "; ".join(self.problems)


@pytest.fixture(scope="module")
def shared_session(tmp_path_factory):
    shared = SharedSession(tmp_path_factory)
    yield shared
    shared.close()


@pytest.fixture
def lan_session(shared_session) -> Session:
    return shared_session.get()


@pytest.fixture
def own_session_path(shared_session, tmp_path):
    """tmp_path for a case that starts a session of its own, alone on the machine (the cases
    that take it come first in this file, so that the shared session is not started twice)."""
    shared_session.suspend()
    return tmp_path


# -- the steps every case shares ---------------------------------------------------------------

def inject_until_paused(session: Session, label: str, inject, causes: tuple[str, ...],
                        clear=None, timeout_s: float = 3.0, no_pause=None):
    """Engage, inject the fault (inject() returns when it took effect, time.time_ns()), and
    wait for the pause. Returns (injected, paused_at, status). If it does not pause,
    no_pause(injected) runs before the failure (it may explain it)."""
    for attempt in range(1, ATTEMPTS + 1):
        session.engage()
        since = time.time_ns()
        injected = inject()
        try:
            paused_at, status = session.wait_state("PAUSED", since, timeout_s)
        except AssertionError:
            # Only a clutch at that very moment excuses it: the console was not following.
            clutched = [t for t, m in session.master.since("/console/following",
                                                           injected - 300 * MS, injected)
                        if not m.data]
            if not clutched or attempt == ATTEMPTS:
                if no_pause is not None:
                    no_pause(injected)
                raise
            print(f"\n  {label}: attempt {attempt}: no pause, the console stopped following "
                  f"{ms(injected - clutched[0]):.0f} ms before the fault (a clutch); again")
        else:
            if any(cause in status["cause"] for cause in causes):
                if attempt > 1:
                    print(f"  {label}: attempt {attempt} of {ATTEMPTS}")
                return injected, paused_at, status
            print(f"\n  {label}: attempt {attempt}: PAUSED by {status['cause']!r} "
                  f"{ms(paused_at - injected):.0f} ms after the fault, not by it; trying again")
        if clear is not None:
            clear()
    raise AssertionError(f"{label}: never paused by {causes} in {ATTEMPTS} attempts")


def wait_reengaged(session: Session, released_ns: int, arm_follows: bool = True) -> dict:
    """After the arm is ENABLED again (released_ns), wait for the console to re-engage (the
    virtual surgeon presses the operator-present pedal again) and record what follows. With
    arm_follows=False the arm controller need not follow (a pause may stop it first)."""
    master_ns = session.wait_following(True, released_ns, timeout_s=15.0)
    deadline = time.monotonic() + 5.0
    while not session.servo_goals(released_ns):
        assert time.monotonic() < deadline, "no servo command reached the patient site"
        time.sleep(0.02)
    first_goal_ns, first_goal = session.servo_goals(released_ns)[0]
    try:
        follow_ns, _ = session.wait_arm(FOLLOWING, released_ns,
                                        timeout_s=10.0 if arm_follows else 1.0)
    except AssertionError:
        if arm_follows:
            raise
        follow_ns = None
    engaged_ns = min(master_ns, first_goal_ns)
    session.wait_until(engaged_ns + RE_ENGAGE_WINDOW_NS + 100 * MS)
    return {"master_ns": master_ns, "engaged_ns": engaged_ns, "first_goal_ns": first_goal_ns,
            "first_goal": first_goal, "follow_ns": follow_ns}


def hold_figures(session: Session, hold_ns: int, released_ns: int, engage: dict) -> dict:
    """The arm from its hold (hold_ns) through the release (released_ns: ENABLED again) to the
    re-engage and the 500 ms after it."""
    engaged_ns = engage["engaged_ns"]
    measured = session.measured_tips(hold_ns, engaged_ns)
    before_goal = session.measured_tips(hold_ns, engage["first_goal_ns"])
    assert measured and before_goal, "no arm pose recorded while held"
    return {
        "held_s": (engaged_ns - hold_ns) * 1e-9,
        "motion_from_hold_mm": mm(displacement(measured)),
        "motion_settled_mm": mm(displacement(session.measured_tips(hold_ns + SETTLE_NS,
                                                                   engaged_ns))),
        "commanded_motion_mm": mm(displacement(session.command_tips(hold_ns + SETTLE_NS,
                                                                    engaged_ns))),
        "motion_after_release_mm": mm(displacement(session.measured_tips(released_ns,
                                                                         engaged_ns))),
        "reengage_after_release_s": (engaged_ns - released_ns) * 1e-9,
        "arm_follows_after_goal_ms": None if engage["follow_ns"] is None
        else ms(engage["follow_ns"] - engage["first_goal_ns"]),
        "engage_offset_mm": mm(float(np.linalg.norm(engage["first_goal"]
                                                    - before_goal[-1][1]))),
        "reengage_jump_mm": mm(steps(session.command_tips(
            engaged_ns, engaged_ns + RE_ENGAGE_WINDOW_NS))),
        "reengage_ticks": len(session.command_tips(engaged_ns,
                                                   engaged_ns + RE_ENGAGE_WINDOW_NS)),
    }


def report_and_check_hold(label: str, figures: dict) -> None:
    print(f"  {label}: held {figures['held_s']:.2f} s; tip motion while held "
          f"{figures['motion_settled_mm']:.4f} mm after 100 ms settle "
          f"({figures['motion_from_hold_mm']:.4f} mm from the hold itself), joint command "
          f"change {figures['commanded_motion_mm']:.6f} mm; after the release "
          f"{figures['motion_after_release_mm']:.4f} mm until the re-engage "
          f"{figures['reengage_after_release_s']:.2f} s later; the arm followed "
          f"{_follow_text(figures['arm_follows_after_goal_ms'])} the console's first goal, "
          f"which was {figures['engage_offset_mm']:.4f} mm from the held arm; largest tick step "
          f"in the 500 ms after: {figures['reengage_jump_mm']:.3f} mm "
          f"({figures['reengage_ticks']} ticks)")
    assert figures["motion_settled_mm"] < HELD_MOTION_MM
    # From the hold itself the servo still absorbs the tip's momentum, and the controller holds
    # at the last joint states it read, older when it waited for a core: a generous bound.
    assert figures["motion_from_hold_mm"] < HELD_RAW_MOTION_MM
    assert figures["commanded_motion_mm"] < COMMANDED_HOLD_MM
    assert figures["motion_after_release_mm"] < HELD_MOTION_MM
    # The arm controller starts following only on the console's first goal after the release.
    follows_ms = figures["arm_follows_after_goal_ms"]
    assert follows_ms is None or follows_ms >= 0.0
    assert figures["engage_offset_mm"] < ENGAGE_OFFSET_MM
    assert figures["reengage_jump_mm"] < JUMP_MM
    assert figures["reengage_ticks"] >= 10  # enough controller ticks recorded to judge


def _follow_text(follow_ms: float | None) -> str:
    return "never (paused first) after" if follow_ms is None else f"{follow_ms:.1f} ms after"


def pause_case(session: Session, label: str, inject, causes: tuple[str, ...], clear=None,
               while_paused=None, no_pause=None, within_ms: float = PAUSE_WITHIN_MS) -> dict:
    """The whole case: engage, inject, PAUSED and held (each within within_ms of the fault),
    cause cleared, resume, re-engage."""
    injected, paused_at, status = inject_until_paused(session, label, inject, causes, clear,
                                                      no_pause=no_pause)
    hold_ns, hold_reason = session.wait_arm("holding", injected)
    print(f"\n  {label}: PAUSED {ms(paused_at - injected):.1f} ms after the fault "
          f"(cause {status['cause']!r}); the arm controller held "
          f"{ms(hold_ns - injected):.1f} ms after it ({hold_reason!r})")
    assert ms(paused_at - injected) < within_ms
    assert ms(hold_ns - injected) < within_ms
    extra = while_paused(injected, paused_at) if while_paused is not None else None
    session.wait_until(hold_ns + OBSERVE_NS)
    assert session.status()["state"] == "PAUSED"
    if clear is not None:
        clear()
    released_ns, answers = session.resume(paused_at)
    engage = wait_reengaged(session, released_ns)
    figures = hold_figures(session, hold_ns, released_ns, engage)
    refused = [a["reason"] for a in answers if not a["accepted"]]
    print(f"  {label}: resumed after {len(refused)} refused resume(s) {refused}")
    report_and_check_hold(label, figures)
    return {"injected": injected, "paused_at": paused_at, "hold_ns": hold_ns,
            "status": status, "extra": extra, **figures}


# -- the cases -----------------------------------------------------------------------------

@pytest.mark.root
def test_both_links_cut_in_network_namespaces(own_session_path):
    """Both links cut for real: the master site's processes in one network namespace, the
    patient site's in another, joined only by two veth pairs (links a and b), taken down with
    `ip link set DEV down`."""
    with session_or_skip(own_session_path, netns=True) as session:
        def cut() -> int:
            return session.set_links_down(True)

        def restore() -> None:
            restored = session.set_links_down(False)
            for site in ("patient", "master"):
                session.wait_link(site, "REDUNDANT", restored)

        def lost_at(injected, paused_at):
            arrival, report = session.wait_link("patient", "LOST", injected)
            return arrival, report

        figures = pause_case(session, "both links cut", cut, ("link lost",), restore,
                             while_paused=lost_at)
        lost_arrival, report = figures["extra"]
        ages = [float(v.value) for s in report.status if s.hardware_id != "overall"
                for v in s.values if v.key == "last_heard_age_ms" and v.value]
        last_datagram = (report.header.stamp.sec * 10**9 + report.header.stamp.nanosec
                         - min(ages) * MS)
        paused_hold, _ = session.wait_arm("holding: operating state PAUSED",
                                          figures["injected"])
        print(f"  both links cut: the patient bridge reported LOST "
              f"{ms(lost_arrival - figures['injected']):.0f} ms after the cut; the arm held "
              f"on PAUSED {ms(paused_hold - last_datagram):.0f} ms after the last datagram "
              f"(design: link timeout {LINK_TIMEOUT_MS:.0f} ms + 10-20 ms)")
        assert ms(paused_hold - figures["injected"]) < PAUSE_WITHIN_MS


def test_command_age_over_the_limit_on_a_satellite_link(own_session_path):
    """Both links on the geostationary_satellite profile (280 ms one way): every command is
    older than max_command_age_ms (200 ms) when it arrives, so the supervisor pauses as soon as
    the console engages; a resume is refused, naming the cause, while commands still come in
    old; once they stop, a resume is accepted, the arm stays still until the console
    re-engages, and the re-engage pauses again for the same cause."""
    with session_or_skip(own_session_path, profiles=("geostationary_satellite",) * 2) as session:
        label = "command age"
        engaged_ns = session.wait_following(True, 0, timeout_s=30.0)
        paused_at, status = session.wait_state("PAUSED", 0, timeout_s=10.0)
        # Ask to resume at once, at the patient site: it reaches the supervisor while the
        # stream still flows and the console (280 ms away) still follows. Sent from the master
        # site it would take 280 ms too, and under load could come after both had stopped.
        asked = session.command("resume", site="patient")
        session.patient.wait_for("/psm/servo_cp", lambda data: True, 5.0,
                                 "a command at the patient site")
        first_arrival, first_stamp, _ = session.servo_commands(0)[0]
        # The arm controller may take the PAUSED before the probe takes the first command.
        hold_ns, hold_reason = session.wait_arm("holding: operating state PAUSED", engaged_ns)
        print(f"\n  {label}: console engaged; the first command arrived at the patient site "
              f"{ms(first_arrival - engaged_ns):.0f} ms later, "
              f"{ms(first_arrival - first_stamp):.0f} ms after its stamp; PAUSED "
              f"{ms(paused_at - first_arrival):.1f} ms after it "
              f"(cause {status['cause']!r}); the arm held {ms(hold_ns - first_arrival):.1f} ms "
              f"after it")
        assert "command too old" in status["cause"]
        assert ms(first_arrival - first_stamp) > MAX_COMMAND_AGE_MS
        assert ms(paused_at - first_arrival) < PAUSE_WITHIN_MS
        assert ms(hold_ns - first_arrival) < PAUSE_WITHIN_MS
        answer = _wait_answer(session, "resume", asked)
        print(f"  {label}: resume while commands still arrive: {answer}")
        assert not answer["accepted"] and "command too old" in answer["reason"]

        released_ns, answers = session.resume(asked + 1)
        engage = wait_reengaged(session, released_ns, arm_follows=False)
        repaused_at, again = session.wait_state("PAUSED", released_ns, timeout_s=10.0)
        print(f"  {label}: {len(answers)} resume(s) until one was accepted; re-engaged, then "
              f"PAUSED again {ms(repaused_at - engage['engaged_ns']):.0f} ms after the "
              f"re-engage (cause {again['cause']!r})")
        assert "command too old" in again["cause"]
        figures = hold_figures(session, hold_ns, released_ns, engage)
        # The arm controller acts on the supervisor's state, not on the commands' age: until
        # PAUSED reaches it, it follows the commands the supervisor already refused.
        followed = [(stamp, message) for stamp, message in session.arm_diagnostics(
            first_arrival - 100 * MS)]
        spans = [ms(after[0] - before[0]) for before, after in zip(followed, followed[1:],
                                                                    strict=False)
                 if before[1] == FOLLOWING]
        total = mm(displacement(session.measured_tips(first_arrival - 100 * MS)))
        print(f"  {label}: the arm followed commands older than the limit for "
              f"{', '.join(f'{span:.0f}' for span in spans) or 'no'} ms (until PAUSED reached "
              f"the arm controller) and moved {total:.4f} mm in all since the first old command")
        report_and_check_hold(label, figures)
        # Generous: without the pause the arm would track the surgeon, millimetres a second.
        assert total < 1.0


def _wait_answer(session: Session, command: str, asked_ns: int, timeout_s: float = 5.0):
    deadline = time.monotonic() + timeout_s
    while True:
        answers = session.answers(command, asked_ns)
        if answers:
            return answers[0]
        assert time.monotonic() < deadline, f"no answer to {command!r}"
        time.sleep(0.02)


FORGE_FOR_S = 0.5  # the forged command is repeated for at most this long ...
FORGE_PERIOD_S = 0.002  # ... this often, until the supervisor pauses


def test_patient_site_container_killed(own_session_path):
    """The patient site as `telesurg demo` runs it: the bridge and the safety supervisor in one
    site container, the arm controller in a process of its own. SIGKILL the container while
    the console follows: the arm controller holds on its own, first because the commands stop
    (command_timeout_ms), then because the supervisor is silent (supervisor_timeout_ms), and
    the arm stays where it was."""
    with session_or_skip(own_session_path, compose=True) as session:
        session.engage()
        killed = session.kill("patient", "site_container")
        hold_ns, reason = session.wait_arm("holding", killed)
        silent_ns, _ = session.wait_arm("holding: safety supervisor silent", killed)
        session.wait_until(hold_ns + OBSERVE_NS)
        held = session.measured_tips(hold_ns + SETTLE_NS, hold_ns + OBSERVE_NS)
        print(f"\n  patient site container killed: the arm controller held "
              f"{ms(hold_ns - killed):.0f} ms after the kill ({reason!r}; design: "
              f"command_timeout_ms {COMMAND_TIMEOUT_MS:.0f} ms), named the silent supervisor "
              f"{ms(silent_ns - killed):.0f} ms after it (design: supervisor_timeout_ms "
              f"{SUPERVISOR_TIMEOUT_MS:.0f} ms); the arm moved {mm(displacement(held)):.4f} mm "
              "while held")
        assert ms(hold_ns - killed) < KILLED_PEER_WITHIN_MS
        assert ms(silent_ns - killed) < SUPERVISOR_TIMEOUT_MS + KILLED_PEER_WITHIN_MS
        assert held and mm(displacement(held)) < HELD_MOTION_MM


def test_forged_jump_command_at_the_patient_site(lan_session):
    """A /psm/servo_cp forged at the patient site (valid current stamp, arm base frame) 8 mm
    from the arm's tip, while the console follows: the supervisor pauses (step limit) and the
    arm does not go there (the arm controller refuses a goal that far from its setpoint).

    Commands are best effort, keep-last-1 (the latest wins): one forged sample may be replaced
    by the console's next command before a busy node takes it, so the forgery is repeated
    every 2 ms (a fresh stamp each time) until the supervisor pauses (printed: how many)."""
    session = lan_session
    offset = np.array([0.008, 0.0, 0.0])
    forged = {}

    def forge() -> int:
        measured = session.latest_measured()
        first, sent = None, 0
        deadline = time.monotonic() + FORGE_FOR_S
        while time.monotonic() < deadline:
            message = forged_pose(measured, offset)
            published = session.patient.publish("/psm/servo_cp", message, min_subscribers=3)
            first, sent = first or published, sent + 1
            if any(status["state"] == "PAUSED" for _, status in session.statuses(first)):
                break
            time.sleep(FORGE_PERIOD_S)
        position = message.pose.position
        forged.update(tip=np.array([position.x, position.y, position.z]), sent=sent)
        return first

    figures = pause_case(session, "forged jump", forge, ("commanded step over the limit",))
    tips = session.measured_tips(figures["injected"], figures["hold_ns"] + OBSERVE_NS)
    closest = min(mm(float(np.linalg.norm(tip - forged["tip"]))) for _, tip in tips)
    log = session.node("patient", "arm_controller").log_path.read_text(errors="replace")
    refused = [line.split(": ", 1)[-1] for line in log.splitlines()
               if "exceeds the jump limit" in line]
    print(f"  forged jump: {forged['sent']} forged command(s) sent until PAUSED; the arm came "
          f"no closer than {closest:.3f} mm to the forged goal 8 mm away; arm controller: "
          f"{refused[-1] if refused else 'no forged goal taken before PAUSED'}")
    assert closest > 7.5


def test_operator_presence_released(lan_session):
    """/console/operator_present False at the master site while the console follows (the
    virtual surgeon publishes that topic on change only, so this stays the latest value until
    the surgeon presses the pedal again about a second after the console stopped): PAUSED,
    presence lost.

    The console stops following on the same release, and /console/following and
    /console/operator_present cross the bridge as two topics with no order between them: the
    supervisor counts a release that comes within its presence grace after the console's stop
    as a release while following (this race once let the console re-engage with no resume)."""
    session = lan_session
    from std_msgs.msg import Bool

    session.master.publisher("/console/operator_present", "std_msgs/msg/Bool", "state")

    def release() -> int:
        # The console and the master bridge listen.
        return session.master.publish("/console/operator_present", Bool(data=False),
                                      min_subscribers=2)

    def no_pause(injected: int) -> None:
        stopped = [t for t, m in session.patient.since("/console/following", injected)
                   if not m.data]
        released = [t for t, m in session.patient.since("/console/operator_present", injected)
                    if not m.data]
        if stopped and released:
            pytest.fail(f"no pause; at the patient site the console's stop arrived "
                        f"{ms(stopped[0] - injected):.1f} ms and the release "
                        f"{ms(released[0] - injected):.1f} ms after the release was published")

    try:
        pause_case(session, "presence released", release, ("operator presence lost",),
                   no_pause=no_pause)
    finally:
        session.master.drop_publisher("/console/operator_present")


def test_patient_bridge_killed(lan_session):
    """SIGKILL the patient site's bridge while the console follows: commands stop, the link
    state goes silent, PAUSED (link lost, or the stream stale: both deadlines are close); a
    resume at the patient site is refused (link lost); a restarted bridge brings the link back
    and the operator's resume from the master site goes through."""
    session = lan_session

    def kill() -> int:
        return session.kill("patient", "bridge")

    def restart() -> None:
        restarted = session.restart("patient", "bridge")
        for site in ("patient", "master"):
            session.wait_link(site, "REDUNDANT", restarted, timeout_s=30.0)

    def while_paused(injected, paused_at):
        # Once the link state has been silent for link_state_timeout_ms, link lost persists.
        silent, _ = session.patient.wait_for(
            "/safety/status", lambda m: any(cause.startswith("link lost") for cause in
                                            json.loads(m.data)["persisting"]),
            5.0, "link lost to persist", paused_at)
        asked = session.command("resume", site="patient")
        return silent, _wait_answer(session, "resume", asked)

    figures = pause_case(session, "patient bridge killed", kill,
                         ("link lost", "command stream stale"), restart, while_paused,
                         within_ms=KILLED_PEER_WITHIN_MS)
    silent, answer = figures["extra"]
    late = session.patient.since("/psm/servo_cp", figures["injected"] + 50 * MS,
                                 figures["hold_ns"] + OBSERVE_NS)
    print(f"  patient bridge killed: the supervisor's status (every 0.5 s) named link lost "
          f"persisting {ms(silent - figures['injected']):.0f} ms after the kill (design: "
          f"link_state_timeout_ms {LINK_STATE_TIMEOUT_MS:.0f} ms after the bridge's last 10 Hz "
          f"report); commands after the kill: {len(late)}; resume at the patient site: "
          f"{answer}")
    assert ms(figures["paused_at"] - figures["injected"]) < max(LINK_STATE_TIMEOUT_MS + 700.0,
                                                               KILLED_PEER_WITHIN_MS)
    assert not late
    assert not answer["accepted"] and "link lost" in answer["reason"]


def test_safety_supervisor_killed(lan_session):
    """SIGKILL the safety supervisor while the console follows: its /psm/operating_state
    heartbeat stops and the arm controller holds on its own within supervisor_timeout_ms
    (250 ms), whatever the console keeps streaming. A restarted supervisor starts DISABLED;
    once the console has stopped, `enable` and a fresh re-engage move the arm again, without a
    jump."""
    session = lan_session
    label = "supervisor killed"
    session.engage()
    killed = session.kill("patient", "safety_supervisor")
    hold_ns, reason = session.wait_arm("holding: safety supervisor silent", killed)
    print(f"\n  {label}: the arm controller held {ms(hold_ns - killed):.0f} ms after the kill "
          f"({reason!r}; design: supervisor_timeout_ms {SUPERVISOR_TIMEOUT_MS:.0f} ms after "
          f"the last heartbeat, which is at most 50 ms before the kill)")
    assert ms(hold_ns - killed) < KILLED_PEER_WITHIN_MS
    session.wait_until(hold_ns + OBSERVE_NS)
    held = session.measured_tips(hold_ns, hold_ns + OBSERVE_NS)
    goals = session.servo_goals(hold_ns + SETTLE_NS, hold_ns + OBSERVE_NS)
    wander = mm(max(float(np.linalg.norm(tip - held[0][1])) for _, tip in goals)) if goals else 0
    print(f"  {label}: meanwhile the console {'kept' if session.following() else 'stopped'} "
          f"following: {len(goals)} goals reached the patient site in the held second, up to "
          f"{wander:.2f} mm from the held tip; the arm moved "
          f"{mm(displacement(held)):.4f} mm")
    assert mm(displacement(session.measured_tips(hold_ns + SETTLE_NS,
                                                 hold_ns + OBSERVE_NS))) < HELD_MOTION_MM

    restarted = session.restart("patient", "safety_supervisor")
    session.wait_state("DISABLED", restarted, timeout_s=30.0)
    session.wait_arm("holding: operating state DISABLED", restarted)
    # The console learns DISABLED and stops following (it cannot engage again until ENABLED);
    # only then is `enable` sent (see the report: enable is not refused while following).
    told, _ = session.master.wait_for("/psm/operating_state", lambda m: m.state == "DISABLED",
                                      10.0, "DISABLED at the master site", restarted)
    session.wait_until(told + 100 * MS)  # a following=True already in flight lands first
    stopped = session.wait_following(False, told, timeout_s=10.0, latest=True)
    session.wait_following(False, told, timeout_s=10.0, site="patient", latest=True)
    print(f"  {label}: the restarted supervisor's DISABLED reached the master site "
          f"{ms(told - restarted):.0f} ms after the restart; the console stopped following "
          f"{ms(stopped - told):.0f} ms from then")
    released_ns = session.enable(timeout_s=20.0)
    engage = wait_reengaged(session, released_ns)
    report_and_check_hold(label, hold_figures(session, hold_ns, released_ns, engage))


FLAPS = 100
FLAP_UP_S = 0.03
FLAP_DOWN_S = 0.03  # under the bridges' link timeout (LINK_TIMEOUT_MS)
FLAP_LONG_DOWN_S = 0.15  # past it: the sites see LOST


def flap_down_s(flap: int) -> float:
    """The first half of the cycles stay under the link timeout; in the second half every
    other one goes past it."""
    return FLAP_LONG_DOWN_S if flap >= FLAPS // 2 and flap % 2 else FLAP_DOWN_S


def test_flapping_links_end_consistent(lan_session):
    """100 rapid down/up cycles of both links (LinkEmulator.set_down), 30 ms up each: 50 with
    30 ms down (under the bridges' 50 ms link timeout: the arm may go on following), then 50
    alternating 30 ms and 150 ms down (past the timeout: the link is LOST and the arm pauses).
    Afterwards: every node alive, the supervisor, the console and the arm controller agree
    (PAUSED: console not following, arm holding; ENABLED: the arm follows exactly when the
    console does), no tip motion beyond 0.1 mm while held, no jump, and the session resumes and
    re-engages as usual."""
    session = lan_session
    session.engage()
    started = time.time_ns()
    for flap in range(FLAPS):
        if flap == FLAPS // 2:
            halfway = time.time_ns()
        session.set_links_down(True)
        time.sleep(flap_down_s(flap))
        session.set_links_down(False)
        time.sleep(FLAP_UP_S)
    ended = time.time_ns()
    for site in ("patient", "master"):
        session.wait_link(site, "REDUNDANT", ended)
    state = _wait_consistent(session, timeout_s=10.0, steady_s=0.5)
    settled = time.time_ns()
    assert session.all_alive(), session.dead()

    transitions = _transitions(session.statuses(0, started)[-1:]
                               + session.statuses(started, settled))
    overall = [overall_state(m) for _, m in session.patient.since("/bridge/link_state",
                                                                   started, ended)]
    lost = sum(1 for before, after in zip(overall, overall[1:], strict=False)
               if after == "LOST" and before != "LOST")
    decisions = session.arm_diagnostics(started)
    holds = _held_intervals(session, started, settled)
    held_motion = max((mm(displacement(session.measured_tips(start + SETTLE_NS, end)))
                       for start, end in holds), default=0.0)
    raw_motion = max((mm(displacement(session.measured_tips(start, end)))
                      for start, end in holds), default=0.0)
    jump = mm(steps(session.command_tips(started, settled)))
    short_flaps = _transitions(session.statuses(0, started)[-1:]
                               + session.statuses(started, halfway))
    print(f"\n  flapping: {FLAPS} cycles in {(ended - started) * 1e-9:.1f} s; the patient bridge "
          f"went LOST {lost} times; supervisor transitions {transitions} "
          f"({len(short_flaps)} in the first {FLAPS // 2} cycles, all under the link timeout); "
          f"{len(holds)} arm holds ({len(decisions)} arm controller decisions); ended "
          f"{state}; tip motion while held {held_motion:.4f} mm after 100 ms settle "
          f"({raw_motion:.4f} mm from the hold); largest tick step {jump:.3f} mm")
    assert lost >= 1
    assert held_motion < HELD_MOTION_MM
    assert jump < JUMP_MM

    if state == "PAUSED":
        paused_at = max(t for t, s in session.statuses(started, settled)
                        if s["state"] == "PAUSED")
        hold_ns = max(start for start, _ in holds)
        released_ns, _ = session.resume(paused_at)
        engage = wait_reengaged(session, released_ns)
        report_and_check_hold("after flapping", hold_figures(session, hold_ns, released_ns,
                                                              engage))
    session.engage()


def _transitions(statuses) -> list[str]:
    out, previous = [], None
    for _, status in statuses:
        if status["state"] != previous:
            if previous is not None:
                out.append(f"{previous}->{status['state']} ({status['cause']})")
            previous = status["state"]
    return out


def _held_intervals(session: Session, start_ns: int, end_ns: int) -> list[tuple[int, int]]:
    """(start, end) stamps of the arm controller's holds between start_ns and end_ns."""
    intervals, held_since = [], None
    before = session.arm_diagnostics(0)
    if before and before[-1][0] < start_ns and before[-1][1] != FOLLOWING:
        held_since = start_ns
    for stamp, message in session.arm_diagnostics(start_ns):
        if stamp > end_ns:
            break
        if message == FOLLOWING:
            if held_since is not None:
                intervals.append((held_since, stamp))
            held_since = None
        elif held_since is None:
            held_since = stamp
    if held_since is not None:
        intervals.append((held_since, end_ns))
    return intervals


def _consistent(session: Session) -> str | None:
    """The state if the supervisor, the console and the arm controller agree, else None."""
    status, following, arm = session.status(), session.following(), session.arm_state()
    if status is None or arm is None:
        return None
    if status["state"] == "PAUSED" and not following and arm.startswith(
            "holding: operating state PAUSED"):
        return "PAUSED"
    if status["state"] == "ENABLED" and (arm == FOLLOWING) == bool(following):
        return "ENABLED"
    return None


def _wait_consistent(session: Session, timeout_s: float, steady_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    state, since = None, time.monotonic()
    while True:
        session.raise_if_dead()
        now_state = _consistent(session)
        if now_state != state:
            state, since = now_state, time.monotonic()
        if state is not None and time.monotonic() - since >= steady_s:
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"no consistent state within {timeout_s:g} s: status "
                                 f"{session.status()}, console following {session.following()}"
                                 f", arm {session.arm_state()!r}")
        time.sleep(0.02)
