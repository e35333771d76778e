"""What the console page shows, kept by the web console node and sent to the page as JSON: the
arm's state and its cause, the console's pedals and following, each link's health with the last
HISTORY_S of it, the arm tip, the state commands' answers, and the two latencies to the eye
(capture to display, key press to the arm's motion on the page).

Pure Python: the node feeds it what it hears (operator_cli.Picture does the reading), the web
server asks it for messages."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from telesurg.analysis.metrics import percentiles
from telesurg.contract.states import OperatingState, OverallState, StateCommand
from telesurg.session.operator_cli import (
    Picture,
    command_answer,
    commands_counted,
    format_answer,
)

HISTORY_S = 30.0  # the links' plot spans this much
#: The arm has moved for a key press once its tip went this far in the pressed direction: well
#: above a held arm's jitter (under 0.05 mm), and 10 ms of travel at full key speed (1 cm/s).
MOTION_THRESHOLD_M = 0.0001
#: A press that moved nothing in this long (not following, arm paused) is forgotten.
MOTION_WAIT_S = 5.0
ANSWER_TIMEOUT_S = 3.0  # a state command unanswered this long is reported so
LATENCY_SAMPLES = 600  # each latency's figures are over the last this many
#: What the page shows while both links are down: the patient site pauses an enabled arm then
#: (the safety contract), and nothing it says can reach this site until a link is back.
ASSUMED_PAUSE_CAUSE = ("both links lost: the patient site pauses the arm (safety contract); "
                       "its own report comes when a link is back")


@dataclass
class MotionWatch:
    """Tells when the arm has moved in the direction of the latest key press."""

    press: int | None = None
    direction: np.ndarray | None = None
    start_tip: np.ndarray | None = None
    started_at: float = 0.0

    def start(self, press: int, direction: np.ndarray, tip: np.ndarray | None,
              now: float) -> None:
        """A press at now moving the master in direction (the arm moves the same way: the
        mapping scales master motion in the arm's base frame); tip: the arm's, when known."""
        self.press, self.direction, self.started_at = press, direction, now
        self.start_tip = None if tip is None else np.array(tip, dtype=float)

    def on_tip(self, tip: np.ndarray, now: float) -> int | None:
        """The press the arm has now moved for (once), else None."""
        if self.press is None:
            return None
        if now - self.started_at > MOTION_WAIT_S:
            self.press = None
            return None
        if self.start_tip is None:
            self.start_tip = np.array(tip, dtype=float)
            return None
        if float(np.dot(np.asarray(tip) - self.start_tip, self.direction)) < MOTION_THRESHOLD_M:
            return None
        press, self.press = self.press, None
        return press


@dataclass(frozen=True)
class Answer:
    """What the page shows of a state command's fate: the text, and whether the supervisor
    accepted it (None: no answer came)."""

    text: str
    accepted: bool | None


@dataclass
class PendingCommand:
    command: str
    counted: int  # the supervisor's command count before it was sent
    sent_at: float


class CommandDesk:
    """The page's state command buttons: what was sent, and the supervisor's answer to it (as
    `telesurg state` reads it: /safety/status's last_command)."""

    def __init__(self):
        self.status: dict | None = None
        self.pending: PendingCommand | None = None

    def send(self, command: str, now: float) -> str | None:
        """Record command as sent now; the reason it cannot be sent, if any (then send
        nothing)."""
        if command not in tuple(StateCommand):
            return f"unknown state command {command!r}: one of {', '.join(StateCommand)}"
        if self.status is None:
            return f"{command}: not sent: no safety status heard yet (is the patient site up?)"
        self.pending = PendingCommand(command, commands_counted(self.status), now)
        return None

    def on_status(self, status: dict) -> Answer | None:
        """The answer, when status answers the pending command."""
        self.status = status
        pending = self.pending
        if pending is None:
            return None
        answer = command_answer(status, pending.command, pending.counted)
        if answer is None:
            return None
        self.pending = None
        return Answer(format_answer(pending.command, answer, str(status.get("state"))),
                      bool(answer.get("accepted")))

    def expired(self, now: float) -> Answer | None:
        """That the pending command went unanswered, once."""
        pending = self.pending
        if pending is None or now - pending.sent_at < ANSWER_TIMEOUT_S:
            return None
        self.pending = None
        return Answer(f"{pending.command}: no answer within {ANSWER_TIMEOUT_S:g} s (is the link "
                      "to the patient site up?)", None)


def latency_figures(samples) -> dict | None:
    """{"p50", "p99", "n"} of the finite samples (ms, to 0.1 ms), None for none."""
    values = [value for value in samples if math.isfinite(value)]
    if not values:
        return None
    figures = percentiles(values)
    return {"p50": round(figures["p50"], 1), "p99": round(figures["p99"], 1), "n": len(values)}


@dataclass
class ConsoleView:
    """Everything the page shows but the video."""

    picture: Picture = field(default_factory=Picture)
    clutch: bool = False
    operator_present: bool = False
    hands_driving: bool = False   # a page is sending controls
    hands_blocked: str = ""       # why this console's hands do not publish, if they do not
    video_sources: int | None = None  # publishers of the endoscope's video here (None: not yet)
    tip: list | None = None       # the arm tip (m), as the master site hears it
    history: deque = field(default_factory=deque)  # (t, overall, {link: (state, rtt, loss)})
    capture_to_display_ms: deque = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    key_to_motion_ms: deque = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def on_links(self, now: float) -> None:
        """Keep the picture's latest link report in the history."""
        report = self.picture.links or {"overall": None, "links": {}}
        self.history.append((now, report["overall"], {
            name: (link.get("state"), link.get("rtt_ms"), link.get("loss_percent"))
            for name, link in report["links"].items()}))
        while self.history and now - self.history[0][0] > HISTORY_S:
            self.history.popleft()

    def on_page_latency(self, report: dict) -> None:
        """The page's measurements: lists of capture-to-display and key-to-motion times (ms);
        anything else in them is ignored."""
        for key, store in (("capture_to_display_ms", self.capture_to_display_ms),
                           ("key_to_motion_ms", self.key_to_motion_ms)):
            values = report.get(key)
            if isinstance(values, list):
                store.extend(float(v) for v in values[:LATENCY_SAMPLES]
                             if isinstance(v, int | float) and not isinstance(v, bool)
                             and 0.0 <= v < 60_000.0)

    def latency(self) -> dict:
        return {"capture_to_display_ms": latency_figures(self.capture_to_display_ms),
                "key_to_motion_ms": latency_figures(self.key_to_motion_ms)}

    def state_message(self, now: float, with_history: bool = False) -> dict:
        """The page's state message; with_history, also the last HISTORY_S of link reports
        (a page that has just connected: from then on it keeps its own)."""
        picture, status = self.picture, self.picture.status or {}
        heard = picture.heard
        arm = {"state": picture.state or status.get("state"), "homed": picture.homed,
               "cause": status.get("cause"), "persisting": status.get("persisting") or [],
               "warnings": status.get("warnings") or [], "assumed": False}
        lost = (picture.links or {}).get("overall") == OverallState.LOST
        if lost and arm["state"] in (OperatingState.ENABLED, OperatingState.PAUSED):
            arm.update(state=OperatingState.PAUSED.value, cause=ASSUMED_PAUSE_CAUSE,
                       assumed=True)
        return {
            "type": "state",
            "arm": arm,
            "console": {"following": picture.following, "clutch": self.clutch,
                        "operator_present": self.operator_present,
                        "hands_driving": self.hands_driving, "hands_blocked": self.hands_blocked},
            "video_sources": self.video_sources,
            "links": picture.links,
            "history": ([[round(t - now, 2), overall, links]
                         for t, overall, links in self.history] if with_history else None),
            "tip_mm": None if self.tip is None else [round(1e3 * v, 2) for v in self.tip],
            "heard_ago_s": {topic: round(now - at, 2) for topic, at in heard.items()},
            "latency": self.latency(),
        }
