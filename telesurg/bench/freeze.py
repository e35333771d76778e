"""`telesurg bench freeze`: how fast the arm holds when every link is cut while it follows the
surgeon, and how still it then holds.

One session as `telesurg demo` runs it (the virtual surgeon performing its task, the demo's
link timeout), the two sites in network namespaces joined only by two veth pairs
(telesurg.bench.sessions, as the fault matrix's "both links cut" case), and TRIALS trials of:
the arm following -> both links cut (`ip link set DEV down` at the master end) -> the arm held
on PAUSED -> held for HELD_S -> links restored -> the operator resumes -> the virtual surgeon
re-engages by itself (it presses the operator-present pedal again).

Reaction, as the fault matrix measures it: from the last datagram the patient bridge heard (its
first LOST report's stamp minus the smallest last-heard age of its links) to the arm
controller's decision "holding: operating state PAUSED" (its /diagnostics, stamped with the
control tick that decided it): the bridge declares the path LOST link_timeout_ms after the last
datagram, the safety supervisor pauses, the arm controller holds on its next tick. The arm
controller holds on its own before that, once the commands are 50 ms stale: reported too.

The measuring side is a process inside the patient site's namespace (`python -m
telesurg.bench.freeze driver ...`; DDS there sees only that site). It also plays the operator,
sending `resume` on the patient site's /psm/state_command, the topic the master site's command
reaches the supervisor on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import yaml

from telesurg.analysis.metrics import percentiles
from telesurg.bench import Result, Row
from telesurg.bench.sessions import (
    Namespaces,
    NetnsUnavailable,
    cpu_note,
    pick_domain_pair,
    run_measurer,
    start_sites,
)
from telesurg.bridge.wire import write_key
from telesurg.contract import topics
from telesurg.contract.fields import link_state_values, stamp_ns, tip_position
from telesurg.contract.graph import DEFAULT_LINKS
from telesurg.contract.resources import default_config
from telesurg.contract.states import (
    LINK_OVERALL_ID,
    SAFETY_SUPERVISOR_STATUS,
    ArmHold,
    OperatingState,
    OverallState,
    StateCommand,
)
from telesurg.contract.topics import Qos
from telesurg.patient.safety import Cause
from telesurg.session.demo import DemoOptions, plan_sites

TRIALS = 30
MAX_ATTEMPTS = 40  # a trial excluded (e.g. a clutch at the cut) is run again, up to this many
TRIALS_BUDGET_S = 150.0  # no trial starts later than this after the first; start-up on top
TASK, SEED = "suturing", 1
#: How long the arm follows before the cut, drawn per trial: cuts fall at every phase of the
#: task and of the bridges' 100 Hz heartbeats.
FOLLOW_S = (0.3, 0.7)
HELD_S = 0.5  # the links stay cut this long after the hold: the window of the tip motion
TARGET_MARGIN_MS = 10.0  # target: p99 <= link timeout + this
STARTUP_TIMEOUT_S = 60.0
ENGAGE_TIMEOUT_S = 15.0
HOLD_TIMEOUT_S = 3.0
RETRY_S = 0.5  # how often resume / enable are repeated until they take
POLL_S = 0.01


# -- what a trial measured (pure) ------------------------------------------------------------

def lost_report(reports, since_ns: int) -> tuple[int, int] | None:
    """The patient bridge's first LOST report stamped at or after since_ns: (its stamp, when
    the bridge last heard any link: the stamp minus the smallest last-heard age of its links).
    reports: (stamp ns, overall state, [last-heard age ms or None per link]), by stamp."""
    for stamp, overall, ages in reports:
        if stamp >= since_ns and overall == OverallState.LOST:
            heard = [age for age in ages if age is not None]
            return (stamp, stamp - int(min(heard) * 1e6)) if heard else None
    return None


def trial_figures(decisions, cut_ns: int, lost: tuple[int, int], tips, until_ns: int,
                  pauses: list[int] = ()) -> dict:
    """One trial from the arm controller's decisions ((stamp ns, ArmHold), by stamp), the
    bridge's LOST report (see lost_report), the measured tips ((stamp ns, xyz m)) until
    until_ns and the safety supervisor's PAUSED reports (stamps, in order): reaction_ms (last
    datagram to the hold on PAUSED), lost_ms (to the LOST report), paused_ms (to the
    supervisor's first PAUSED report after it; None without one), first_hold_ms (to the first
    hold of any reason) and tip_motion_um (largest distance from the tip at the first hold);
    {"excluded": why} if the arm was not following at the cut or did not hold on PAUSED."""
    reported_ns, last_ns = lost
    before = [hold for stamp, hold in decisions if stamp <= cut_ns]
    if not before or before[-1].holding:
        return {"excluded": f"the arm was not following at the cut "
                            f"({before[-1] if before else 'no decision yet'})"}
    after = [(stamp, hold) for stamp, hold in decisions if stamp >= last_ns]
    first_hold = next((stamp for stamp, hold in after if hold.holding), None)
    paused_hold = next((stamp for stamp, hold in after if hold.paused), None)
    if paused_hold is None:
        return {"excluded": "no hold on PAUSED"}
    held = np.array([tip for stamp, tip in tips if first_hold <= stamp <= until_ns])
    motion = float(np.linalg.norm(held - held[0], axis=1).max()) if len(held) else None
    paused = next((stamp for stamp in pauses if stamp >= reported_ns), None)
    return {"reaction_ms": (paused_hold - last_ns) * 1e-6,
            "lost_ms": (reported_ns - last_ns) * 1e-6,
            "paused_ms": None if paused is None else (paused - last_ns) * 1e-6,
            "first_hold_ms": (first_hold - last_ns) * 1e-6,
            "tip_motion_um": None if motion is None else motion * 1e6}


# -- the driver: a process in the patient site's namespace -----------------------------------

class TrialError(RuntimeError):
    """The session did not do what a trial needs (engage, pause); the message says what."""


class PatientSite:
    """What the driver sees of the patient site, and the operator's state commands there."""

    def __init__(self):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        from telesurg.ros.qos import publisher, subscription

        self.decisions: list[tuple[int, ArmHold]] = []  # the arm controller's, by stamp
        self.pauses: list[int] = []  # stamps of the safety supervisor's PAUSED reports
        self.statuses: list[tuple[int, str, str]] = []  # (arrival, state, cause)
        self.reports: list[tuple[int, str, list]] = []  # the bridge's, see lost_report
        self.tips: list[tuple[int, np.ndarray]] = []  # /psm/measured_cp (stamp, xyz)
        self.following: bool | None = None  # the console's, as the patient bridge delivers it
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("bench_freeze", context=self.context)
        node = self.node
        # Deep queues: a burst while this process waits for a core is not lost.
        for topic, callback, qos in (
                (topics.DIAGNOSTICS, self._on_diagnostics, Qos.EVENT),
                (topics.SAFETY_STATUS, self._on_status, Qos.STATE),
                (topics.BRIDGE_LINK_STATE, self._on_link_state, Qos.STATE),
                (topics.CONSOLE_FOLLOWING, self._on_following, Qos.STATE),
                (topics.PSM_MEASURED_CP, self._on_measured, Qos.EVENT)):
            subscription(node, topic, callback, qos=qos, depth=200)
        self._commands = publisher(node, topics.PSM_STATE_COMMAND)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(node)
        self._spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self._spinner.start()

    def _on_diagnostics(self, message) -> None:
        for hold in map(ArmHold.of, message.status):
            if hold is not None:
                self.decisions.append((stamp_ns(message), hold))
        if any(status.name == SAFETY_SUPERVISOR_STATUS and status.message == OperatingState.PAUSED
               for status in message.status):
            self.pauses.append(stamp_ns(message))

    def _on_status(self, message) -> None:
        status = json.loads(message.data)
        self.statuses.append((time.time_ns(), status["state"], status["cause"]))

    def _on_link_state(self, message) -> None:
        report = link_state_values(message)
        ages = [float(values["last_heard_age_ms"]) if values.get("last_heard_age_ms") else None
                for name, (_, values) in report.items() if name != LINK_OVERALL_ID]
        self.reports.append((stamp_ns(message), report[LINK_OVERALL_ID][0], ages))

    def _on_following(self, message) -> None:
        self.following = message.data

    def _on_measured(self, message) -> None:
        self.tips.append((stamp_ns(message), tip_position(message)))

    def state(self) -> str | None:
        return self.statuses[-1][1] if self.statuses else None

    def arm(self) -> ArmHold | None:
        return self.decisions[-1][1] if self.decisions else None

    def command(self, command: StateCommand) -> None:
        from telesurg.ros.messages import state_command

        self._commands.publish(state_command(command, self.node.get_clock()))

    def wait(self, condition, timeout_s: float, what: str):
        """condition()'s first true value, polled."""
        deadline = time.monotonic() + timeout_s
        while not (value := condition()):
            if time.monotonic() > deadline:
                raise TrialError(f"no {what} within {timeout_s:g} s (state {self.state()}, "
                                 f"console following {self.following}, arm {self.arm()!r})")
            time.sleep(POLL_S)
        return value

    def engaged(self) -> bool:
        arm = self.arm()
        return (self.state() == OperatingState.ENABLED and bool(self.following)
                and arm is not None and not arm.holding)

    def engage(self) -> None:
        """Until the arm follows the console: `enable` or `resume` as the state needs (the
        virtual surgeon re-engages by itself once the arm is ENABLED)."""
        next_try = 0.0

        def engaged() -> bool:
            nonlocal next_try
            state, now = self.state(), time.monotonic()
            if state == OperatingState.FAULT:
                raise TrialError(f"the supervisor is in FAULT ({self.statuses[-1][2]})")
            if now >= next_try and (state == OperatingState.DISABLED
                                    or (state == OperatingState.PAUSED
                                        and self.following is False)):
                self.command(StateCommand.ENABLE if state == OperatingState.DISABLED
                             else StateCommand.RESUME)
                next_try = now + RETRY_S
            return self.engaged()
        self.wait(engaged, ENGAGE_TIMEOUT_S, "engage")

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self._spinner.join()  # a thread still in DDS at exit aborts the process
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def run_trial(site: PatientSite, namespaces, rng: random.Random) -> dict:
    site.engage()
    time.sleep(rng.uniform(*FOLLOW_S))
    if not site.engaged():  # paused or clutched meanwhile: not a cut of a following arm
        return {"excluded": f"not following just before the cut (state {site.state()}, "
                            f"arm {site.arm()!r})"}
    cut_ns, _ = namespaces.set_links(DEFAULT_LINKS, True)
    try:
        lost = site.wait(lambda: lost_report(site.reports, cut_ns), HOLD_TIMEOUT_S,
                         "LOST report from the patient bridge")
        cause = site.wait(lambda: next((cause for arrival, state, cause in site.statuses
                                        if arrival >= cut_ns and state == OperatingState.PAUSED),
                                       None), HOLD_TIMEOUT_S, "pause")
        paused_hold = site.wait(lambda: next((stamp for stamp, hold in site.decisions
                                              if stamp >= cut_ns and hold.paused),
                                             None), HOLD_TIMEOUT_S, "hold on PAUSED")
        time.sleep(max(0.0, (paused_hold - time.time_ns()) * 1e-9 + HELD_S))
        until_ns = time.time_ns()
    finally:
        restored_ns = namespaces.set_links(DEFAULT_LINKS, False)[1]
    if Cause.LINK_LOST not in cause.split(", "):
        figures = {"excluded": f"paused by {cause!r}, not by the link loss"}
    else:
        figures = trial_figures(site.decisions, cut_ns, lost, site.tips, until_ns,
                                site.pauses)
    site.wait(lambda: any(stamp >= restored_ns and overall == "REDUNDANT"
                          for stamp, overall, _ in site.reports), 10.0,
              "REDUNDANT report after the restore")
    return figures


def drive(config: dict) -> int:
    """The trials, one JSON line each on stdout; an {"error": ...} line ends them early."""
    namespaces = Namespaces(config["label"], config["tag"])
    rng = random.Random(SEED)
    site = PatientSite()
    try:
        site.wait(lambda: site.tips and site.following is not None, STARTUP_TIMEOUT_S,
                  "arm pose and console at the patient site")
        print(json.dumps({"started": True}), flush=True)
        started = time.monotonic()
        measured = 0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if measured == config["trials"] or time.monotonic() - started > TRIALS_BUDGET_S:
                break
            figures = run_trial(site, namespaces, rng)
            measured += "excluded" not in figures
            print(json.dumps({"attempt": attempt, **figures}), flush=True)
    except TrialError as error:
        print(json.dumps({"error": str(error)}), flush=True)
    finally:
        site.close()
    return 0


# -- the benchmark: the session, and the driver inside it ------------------------------------

def run() -> Result:
    with contextlib.ExitStack() as stack:
        out = Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="telesurg-bench-freeze-")))
        try:
            lines, timeout_ms, cpu = _session(out, stack)
        except NetnsUnavailable as error:
            return Result("freeze", {"skipped": str(error)},
                          [Row("both links cut", "skipped", str(error))],
                          notes=[f"not measured: network namespaces unavailable ({error})"])
    return _result(lines, timeout_ms, cpu)


def _session(out: Path, stack: contextlib.ExitStack) -> tuple[list[dict], float, dict]:
    """Bring the session up in namespaces and run the driver: its JSON lines, the link timeout
    of the session's bridge configuration, and the CPU share over the trials."""
    namespaces = Namespaces("freeze")
    stack.callback(namespaces.delete)
    namespaces.create()
    write_key(out / "bridge.key")
    bridge_config = namespaces.bridge_config(out)
    timeout_ms = float(yaml.safe_load(bridge_config.read_text())["link_timeout_ms"])
    sites = plan_sites(DemoOptions(task=TASK, seed=SEED, out=out), default_config(),
                       pick_domain_pair(), bridge_config)
    groups = start_sites(sites, out, stack, namespaces)
    config = {"label": namespaces.label, "tag": namespaces.tag, "trials": TRIALS}
    lines, cpu = run_measurer(
        ["ip", "netns", "exec", namespaces.names["patient"], sys.executable, "-m",
         "telesurg.bench.freeze", "driver", json.dumps(config)],
        groups[1].env, out / "logs" / "driver.log", groups, stack,
        on_line=lambda line: print(f"  {_progress(line)}", flush=True))
    return lines, timeout_ms, cpu


def _progress(line: dict) -> str:
    if "error" in line:
        return f"stopped: {line['error']}"
    if "excluded" in line:
        return f"attempt {line['attempt']}: excluded, {line['excluded']}"
    return (f"attempt {line['attempt']}: held on PAUSED {line['reaction_ms']:.1f} ms after the "
            f"last datagram (LOST report {line['lost_ms']:.1f} ms, first hold "
            f"{line['first_hold_ms']:.1f} ms), tip moved {_number(line['tip_motion_um'], 3)} µm")


def _result(lines: list[dict], timeout_ms: float, cpu: dict) -> Result:
    trials = [line for line in lines if "reaction_ms" in line]
    excluded = Counter(line["excluded"] for line in lines if "excluded" in line)
    stopped = next((line["error"] for line in lines if "error" in line), None)
    reaction = percentiles([t["reaction_ms"] for t in trials])
    first_hold = percentiles([t["first_hold_ms"] for t in trials])
    # Where the reaction goes: the bridge's loss detection, then the supervisor and the arm.
    lost = percentiles([t["lost_ms"] for t in trials])
    lost_to_hold = percentiles([t["reaction_ms"] - t["lost_ms"] for t in trials])
    split = [t for t in trials if t.get("paused_ms") is not None]
    lost_to_pause = percentiles([t["paused_ms"] - t["lost_ms"] for t in split])
    pause_to_hold = percentiles([t["reaction_ms"] - t["paused_ms"] for t in split])
    motion = percentiles([t["tip_motion_um"] for t in trials if t["tip_motion_um"] is not None])
    target_ms = timeout_ms + TARGET_MARGIN_MS
    met = reaction["p99"] is not None and reaction["p99"] <= target_ms
    figures = {"trials": len(trials), "attempts": len(lines) - (stopped is not None),
               "excluded": sum(excluded.values()), "stopped": stopped,
               "link_timeout_ms": timeout_ms, "target_p99_ms": target_ms, "met": met,
               "reaction_ms": reaction, "lost_report_ms": lost,
               "lost_report_to_hold_ms": lost_to_hold, "lost_report_to_pause_ms": lost_to_pause,
               "pause_to_hold_ms": pause_to_hold, "first_hold_ms": first_hold,
               "tip_motion_after_hold_um": motion, "held_s": HELD_S,
               "task": TASK, "seed": SEED, "cpu": cpu}
    variant = "both links cut (netns)"
    rows = [
        Row(variant, "link loss to hold on PAUSED p50 / p99 / max", _triple(reaction, "ms"),
            f"p99 <= {target_ms:g} ms (link timeout {timeout_ms:g} + {TARGET_MARGIN_MS:g})",
            met),
        Row(variant, "of which: last datagram to the bridge's LOST report p50 / p99 / max",
            _triple(lost, "ms")),
        Row(variant, "of which: LOST report to hold on PAUSED p50 / p99 / max",
            _triple(lost_to_hold, "ms")),
        Row(variant, "of which: LOST report to the supervisor's PAUSED p50 / p99 / max",
            _triple(lost_to_pause, "ms")),
        Row(variant, "of which: the supervisor's PAUSED to the hold on PAUSED p50 / p99 / max",
            _triple(pause_to_hold, "ms")),
        Row(variant, "link loss to first hold (commands stale) p50 / p99 / max",
            _triple(first_hold, "ms")),
        Row(variant, f"tip motion in the {HELD_S:g} s after the hold p99 / max",
            f"{_number(motion['p99'], 4)} / {_number(motion['max'], 4)} µm"),
        Row(variant, "trials", f"{len(trials)} of {TRIALS} wanted, {figures['attempts']} run"),
    ]
    notes = [
        f"{len(trials)} trials in one session in network namespaces (task {TASK}, seed {SEED}, "
        f"the bridges' link_timeout_ms {timeout_ms:g}): the arm following, both veth links cut "
        f"at the master end, kept cut {HELD_S:g} s after the hold, restored, `resume`, the "
        f"virtual surgeon re-engages. {cpu_note(cpu)}",
        "Reaction (as the fault matrix): last datagram heard by the patient bridge (its first "
        "LOST report's stamp - the smallest last-heard age) to the arm controller's "
        "hold on PAUSED (its /diagnostics hold report, stamped with the deciding control tick). "
        "First hold: to its first hold of any cause ('commands stale', 50 ms "
        "command timeout), which is when the arm actually stopped. Tip motion: largest "
        "distance of /psm/measured_cp (stamped when measured) from the tip at the first hold, "
        "until the links were restored.",
    ]
    if excluded:
        notes.append("excluded attempts (run again): " + "; ".join(
            f"{count} x {why}" for why, count in excluded.items()))
    if stopped:
        notes.append(f"stopped after {len(trials)} trials: {stopped}")
    elif len(trials) < TRIALS:
        notes.append(f"{len(trials)} of {TRIALS} trials: the {TRIALS_BUDGET_S:g} s budget or "
                     f"{MAX_ATTEMPTS} attempts ran out")
    if reaction["p99"] is not None and not met:
        notes.append(
            f"p99 {reaction['p99']:.1f} ms misses <= {target_ms:g} ms. The patient bridge "
            f"reported LOST p50 {lost['p50']:.1f} / p99 {lost['p99']:.1f} ms after the last "
            f"datagram for a {timeout_ms:g} ms timeout: its receive thread wakes at the "
            "deadline but then waits for a core and the interpreter lock and builds the report "
            f"in Python. The pause and the hold took p50 {lost_to_hold['p50']:.1f} / p99 "
            f"{lost_to_hold['p99']:.1f} ms more: the LOST report to the safety supervisor "
            f"(a DDS hop inside the patient site container) p99 {_number(lost_to_pause['p99'], 1)}"
            f" ms, the supervisor's PAUSED to the arm controller (another process) and its next "
            f"500 Hz tick p99 {_number(pause_to_hold['p99'], 1)} ms. The session's processes and "
            "this benchmark's driver share the machine's 2 cores with whatever else runs.")
    return Result("freeze", figures, rows, notes=notes)


def _number(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _triple(figures: dict, unit: str) -> str:
    return " / ".join(_number(figures[q], 1) for q in ("p50", "p99", "max")) + f" {unit}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m telesurg.bench.freeze",
                                     description="The freeze benchmark's driver, run inside "
                                                 "the patient site's network namespace.")
    roles = parser.add_subparsers(dest="role", required=True)
    roles.add_parser("driver").add_argument("config", type=json.loads)
    return drive(parser.parse_args(argv).config)


if __name__ == "__main__":
    sys.exit(main())
