"""Operator commands: `telesurg state {enable,disable,pause,resume}` and `telesurg status`.

Both talk to one site's DDS domain, normally the master site (the surgeon's console), where the
bridge carries /psm/state_command to the patient site's safety_supervisor and brings its
/psm/operating_state and /safety/status back; at the patient site they reach the supervisor
directly.

- `state CMD` waits until /psm/state_command has a subscriber (the bridge or the supervisor)
  and the current /safety/status is known, publishes CMD once, and waits for the status that
  answers it: last_command.number above the count known before (the supervisor counts the
  commands it receives) and last_command.command == CMD.
- `status` prints the state, its cause, what persists, following and each link's health, one
  line per change at most every STATUS_INTERVAL_S, until interrupted (or once, with --once).

The logic that matters (matching the answer, reading the link report, formatting) is plain
Python here, tested without ROS; rclpy is imported only by the ROS part at the end (_Site
and the two run_* functions).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from telesurg.contract import topics
from telesurg.contract.states import LINK_OVERALL_ID, LinkState, StateCommand

STATE_COMMAND_TOPIC = topics.PSM_STATE_COMMAND.name
OPERATING_STATE_TOPIC = topics.PSM_OPERATING_STATE.name
STATUS_TOPIC = topics.SAFETY_STATUS.name
FOLLOWING_TOPIC = topics.CONSOLE_FOLLOWING.name
LINK_STATE_TOPIC = topics.BRIDGE_LINK_STATE.name

STATE_COMMANDS = tuple(StateCommand)
#: Fast DDS derives UDP ports from the domain id and refuses ids above 232.
MAX_DOMAIN_ID = 232
STATUS_INTERVAL_S = 0.5  # `telesurg status` prints at most this often
FIRST_PRINT_S = 2.0      # ... and its first line once the picture is complete or after this
#: A report older than this is shown as stale (the publishers repeat at 20, 2 and 10 Hz).
STALE_AFTER_S = {OPERATING_STATE_TOPIC: 1.0, STATUS_TOPIC: 2.0, LINK_STATE_TOPIC: 1.0}
NOT_YET = "no report yet"


# -- domain --------------------------------------------------------------------------------


def parse_domain(text: str) -> int:
    """A DDS domain id from the command line, in [0, MAX_DOMAIN_ID]."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a DDS domain id (an integer in "
                         f"[0, {MAX_DOMAIN_ID}])") from None
    if not 0 <= value <= MAX_DOMAIN_ID:
        raise ValueError(f"{value} is not in [0, {MAX_DOMAIN_ID}] (Fast DDS refuses larger "
                         "domain ids)")
    return value


def resolve_domain(option: int | None, environ=os.environ) -> int:
    """--domain if given, else ROS_DOMAIN_ID, else 0 (the ROS default)."""
    if option is not None:
        return option
    text = environ.get("ROS_DOMAIN_ID", "").strip()
    if not text:
        return 0
    try:
        return parse_domain(text)
    except ValueError as error:
        raise ValueError(f"ROS_DOMAIN_ID: {error}; set it right or give --domain N") from None


# -- state command and its answer ----------------------------------------------------------


def parse_status(text: str) -> dict | None:
    """A /safety/status message as a dict, None if it is not a JSON object."""
    try:
        status = json.loads(text)
    except ValueError:
        return None
    return status if isinstance(status, dict) else None


def commands_counted(status: dict) -> int:
    """How many state commands the supervisor had received when it sent status."""
    last = status.get("last_command")
    if isinstance(last, dict) and isinstance(last.get("number"), int):
        return last["number"]
    return 0


def command_answer(status: dict, command: str, after: int) -> dict | None:
    """status's last_command if it answers command sent when after commands were counted."""
    last = status.get("last_command")
    if (isinstance(last, dict) and isinstance(last.get("number"), int)
            and last["number"] > after and last.get("command") == command):
        return last
    return None


def format_answer(command: str, answer: dict, state: str) -> str:
    """`resume: accepted (PAUSED -> ENABLED); state ENABLED`, or
    `resume: refused: resume refused: link lost (overall LOST); state PAUSED`."""
    reason = str(answer.get("reason") or "")
    if answer.get("accepted"):
        return f"{command}: accepted{f' ({reason})' if reason else ''}; state {state}"
    return f"{command}: refused: {reason or 'no reason given'}; state {state}"


# -- status picture ------------------------------------------------------------------------


def link_report(statuses: Iterable) -> dict:
    """/bridge/link_state (its DiagnosticStatus list) as {"overall": str | None, "links":
    {name: {"state": str, figure: value, ...}}}, figures as floats (None if absent)."""
    overall, links = None, {}
    for status in statuses:
        if status.hardware_id == LINK_OVERALL_ID:
            overall = status.message
            continue
        figures = {kv.key: _number(kv.value) for kv in status.values}
        links[status.hardware_id] = {"state": status.message, **figures}
    return {"overall": overall, "links": links}


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _format_ms(value: float | None) -> str:
    """Milliseconds for reading: one decimal below 100, none above, "?" if unknown."""
    if value is None:
        return "?"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def format_links(report: dict) -> str:
    """`REDUNDANT: a UP rtt 0.8 ms loss 0.0%, b DOWN heard 412 ms ago loss 3.0%`."""
    parts = []
    for name, link in report["links"].items():
        text = f"{name} {link.get('state')}"
        if link.get("state") != LinkState.UP:
            text += f" heard {_format_ms(link.get('last_heard_age_ms'))} ms ago"
        text += f" rtt {_format_ms(link.get('rtt_ms'))} ms"
        loss = link.get("loss_percent")
        text += f" loss {'?' if loss is None else f'{loss:.1f}'}%"
        parts.append(text)
    overall = report["overall"] or "overall unknown"
    return f"{overall}: {', '.join(parts)}" if parts else overall


@dataclass
class Picture:
    """What `telesurg status` knows of a site: the latest of each topic and when it came
    (monotonic seconds)."""

    state: str | None = None           # /psm/operating_state
    homed: bool | None = None          # its is_homed
    status: dict | None = None         # /safety/status
    following: bool | None = None      # /console/following
    links: dict | None = None          # /bridge/link_state, as link_report
    heard: dict[str, float] = field(default_factory=dict)

    def on_state(self, now: float, state: str, homed: bool) -> None:
        self.state, self.homed = state, homed
        self.heard[OPERATING_STATE_TOPIC] = now

    def on_status(self, now: float, text: str) -> None:
        status = parse_status(text)
        if status is not None:
            self.status = status
            self.heard[STATUS_TOPIC] = now

    def on_following(self, now: float, following: bool) -> None:
        self.following = bool(following)
        self.heard[FOLLOWING_TOPIC] = now

    def on_link_state(self, now: float, statuses: Iterable) -> None:
        self.links = link_report(statuses)
        self.heard[LINK_STATE_TOPIC] = now

    def missing(self) -> list[str]:
        """The topics not heard yet."""
        return [topic for topic in (OPERATING_STATE_TOPIC, STATUS_TOPIC, FOLLOWING_TOPIC,
                                    LINK_STATE_TOPIC) if topic not in self.heard]

    def complete(self) -> bool:
        return not self.missing()

    def anything(self) -> bool:
        return bool(self.heard)


def _stale(picture: Picture, topic: str, now: float) -> str:
    heard = picture.heard.get(topic)
    if heard is None or now - heard <= STALE_AFTER_S[topic]:
        return ""
    return f" [stale: no {topic} for {now - heard:.0f} s]"


def format_picture(picture: Picture, now: float) -> str:
    """One line: `PAUSED (cause: link lost; persisting: link lost (overall LOST)) | following
    no | links REDUNDANT: a UP rtt 0.8 ms loss 0.0%, b UP rtt 0.9 ms loss 0.0%`."""
    status = picture.status
    state = picture.state or (status or {}).get("state")
    if state is None:
        head = f"state: {NOT_YET}"
    else:
        details = ["not homed"] if picture.homed is False else []
        if status is None:
            details.append(f"safety status: {NOT_YET}")
        else:
            if status.get("cause"):
                details.append(f"cause: {status['cause']}")
            for key in ("persisting", "warnings"):
                if status.get(key):
                    details.append(f"{key}: {', '.join(map(str, status[key]))}")
        head = state + (f" ({'; '.join(details)})" if details else "")
        head += _stale(picture, OPERATING_STATE_TOPIC, now) if picture.state else ""
        head += _stale(picture, STATUS_TOPIC, now)
    if picture.following is None:
        following = f"following: {NOT_YET}"
    else:
        following = f"following {'yes' if picture.following else 'no'}"
    if picture.links is None:
        links = f"link state: {NOT_YET}"
    else:
        links = f"links {format_links(picture.links)}" + _stale(picture, LINK_STATE_TOPIC, now)
    return " | ".join((head, following, links))


class Throttle:
    """Lets a line through when it differs from the last one let through and at least
    interval_s has passed since."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._last_line: str | None = None
        self._last_time = -math.inf

    def ready(self, line: str, now: float) -> bool:
        if line == self._last_line or now - self._last_time < self.interval_s:
            return False
        self._last_line, self._last_time = line, now
        return True


# -- ROS -----------------------------------------------------------------------------------


class _Site:
    """This process's window on one DDS domain: a context, a node and an executor.

    Ctrl-C and SIGTERM set `stopped` (the spin loops then return) rather than raise inside
    rclpy, and do so even where the process started with SIGINT ignored (a background job)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, domain: int, name: str):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.signals import SignalHandlerOptions

        self.stopped = threading.Event()
        self._previous = {}
        if threading.current_thread() is threading.main_thread():  # where Python allows it
            self._previous = {number: signal.signal(number, lambda *_: self.stopped.set())
                              for number in self.SIGNALS}
        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context, domain_id=domain,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = Node(f"{name}_{os.getpid()}", context=self.context,
                         start_parameter_services=False, enable_rosout=False)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_until(self, condition: Callable[[], bool], deadline: float) -> bool:
        """Spins until condition() holds (True), or the monotonic deadline passes or a signal
        stops it (False)."""
        while True:
            if condition():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.stopped.is_set():
                return False
            self.executor.spin_once(timeout_sec=min(0.05, remaining))

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def _error(command: str, text: str) -> None:
    print(f"telesurg {command}: {text}", file=sys.stderr, flush=True)


def run_state(command: str, domain: int | None, timeout_s: float) -> int:
    """Send one state command and print the supervisor's answer: 0 accepted, 1 refused, 2 no
    site, no status or no answer within timeout_s (or a bad domain), 130 interrupted."""
    try:
        domain = resolve_domain(domain)
    except ValueError as error:
        _error("state", str(error))
        return 2
    deadline = time.monotonic() + timeout_s
    site = None
    try:
        from telesurg.ros.messages import state_command
        from telesurg.ros.qos import publisher, subscription

        site = _Site(domain, "telesurg_state")
        statuses: list[dict] = []
        # As the supervisor publishes it, but deeper: an answer followed at once by another
        # status (a transition, the next period) is not overwritten before it is read.
        subscription(site.node, topics.SAFETY_STATUS,
                     lambda message: statuses.append(parse_status(message.data) or {}),
                     depth=10)
        command_pub = publisher(site.node, topics.PSM_STATE_COMMAND)
        if not site.spin_until(lambda: command_pub.get_subscription_count() > 0, deadline):
            if site.stopped.is_set():
                raise KeyboardInterrupt
            _error("state", f"no subscriber for {STATE_COMMAND_TOPIC} in domain {domain} "
                            f"within {timeout_s:g} s: is the site up (its bridge or "
                            "safety_supervisor), and is this its domain?")
            return 2
        if not site.spin_until(lambda: bool(statuses), deadline):
            if site.stopped.is_set():
                raise KeyboardInterrupt
            _error("state", f"no {STATUS_TOPIC} in domain {domain} within {timeout_s:g} s: is "
                            "the safety_supervisor up, and the link to the patient site?")
            return 2
        counted = commands_counted(statuses[-1])
        statuses.clear()
        command_pub.publish(state_command(command, site.node.get_clock()))
        answer: list[dict] = []

        def answered() -> bool:
            while statuses and not answer:
                status = statuses.pop(0)
                if command_answer(status, command, counted) is not None:
                    answer.append(status)
            return bool(answer)

        if not site.spin_until(answered, deadline):
            if site.stopped.is_set():
                _error("state", f"interrupted after sending {command!r}: see `telesurg status` "
                                "for its outcome")
                return 130
            _error("state", f"sent {command!r} in domain {domain}; no answer on {STATUS_TOPIC} "
                            f"within {timeout_s:g} s (is the link to the patient site up? see "
                            "`telesurg status`)")
            return 2
        status = answer[0]
        print(format_answer(command, status["last_command"], str(status.get("state"))),
              flush=True)
        return 0 if status["last_command"].get("accepted") else 1
    except KeyboardInterrupt:
        _error("state", "interrupted; nothing sent")
        return 130
    finally:
        if site is not None:
            site.close()


def run_status(domain: int | None, once: bool, timeout_s: float,
               interval_s: float = STATUS_INTERVAL_S) -> int:
    """Print the site's live picture, one line per change at most every interval_s, until
    Ctrl-C or SIGTERM (exit 0). With once: the first complete picture (exit 0), or what is
    known after timeout_s (exit 1), or nothing heard (exit 2)."""
    try:
        domain = resolve_domain(domain)
    except ValueError as error:
        _error("status", str(error))
        return 2
    started = time.monotonic()
    picture = Picture()
    site = None
    try:
        from telesurg.ros.qos import subscription

        site = _Site(domain, "telesurg_status")
        node = site.node
        subscription(node, topics.PSM_OPERATING_STATE,
                     lambda m: picture.on_state(time.monotonic(), m.state, m.is_homed))
        subscription(node, topics.SAFETY_STATUS,
                     lambda m: picture.on_status(time.monotonic(), m.data))
        subscription(node, topics.CONSOLE_FOLLOWING,
                     lambda m: picture.on_following(time.monotonic(), m.data))
        subscription(node, topics.BRIDGE_LINK_STATE,
                     lambda m: picture.on_link_state(time.monotonic(), m.status))
        first_wait = timeout_s if once else min(timeout_s, FIRST_PRINT_S)
        site.spin_until(picture.complete, started + first_wait)
        if site.stopped.is_set():
            return 0
        if once:
            if not picture.anything():
                _error("status", f"nothing heard in domain {domain} within {timeout_s:g} s: "
                                 "is the site up, and is this its domain?")
                return 2
            print(format_picture(picture, time.monotonic()), flush=True)
            if not picture.complete():
                _error("status", f"after {timeout_s:g} s still {NOT_YET} on "
                                 f"{', '.join(picture.missing())}")
                return 1
            return 0
        throttle = Throttle(interval_s)
        warned = False
        while not site.stopped.is_set():
            now = time.monotonic()
            line = format_picture(picture, now)
            if throttle.ready(line, now):
                print(line, flush=True)
            if not warned and not picture.anything() and now - started >= timeout_s:
                warned = True
                _error("status", f"nothing heard in domain {domain} for {timeout_s:g} s: is "
                                 "the site up, and is this its domain? (still listening)")
            site.executor.spin_once(timeout_sec=0.05)
        return 0
    except KeyboardInterrupt:  # before the handlers were in place
        return 0
    finally:
        if site is not None:
            site.close()
