"""The recorded surgeon's pedals as a replay works them (`telesurg demo --replay`,
telesurg.session.playback plays the recording): the clutch as recorded, the operator-present
pedal as recorded but pressed again where this session's console stopped following while the
recorded one went on, as the surgeon would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from telesurg.contract import topics
from telesurg.master.surgeon import PresenceRetry

PRESENCE_TOPIC, CLUTCH_TOPIC = topics.CONSOLE_OPERATOR_PRESENT.name, topics.CONSOLE_CLUTCH.name
PEDAL_TOPICS = (PRESENCE_TOPIC, CLUTCH_TOPIC)
#: How often a replay works the operator-present pedal (ReplaySurgeon.work_pedal).
PEDAL_PERIOD_S = 0.01


def following_at(changes: list[tuple[int, bool]], t_ns: int) -> bool:
    """Whether (time, following) changes say following at t_ns."""
    state = False
    for when, following in changes:
        if when > t_ns:
            break
        state = following
    return state


class ReplayedPresence:
    """The operator-present pedal as a replay works it: the recorded pedal, and the
    surgeon's deliberate re-press (PresenceRetry) when this session's console stopped
    following for patience_s while the recorded one went on (a stall of this session's
    master console, say). The console itself never re-engages on its own; a replay without
    this would stay disengaged to the end, since the recording holds no press for it."""

    def __init__(self, patience_s: float = 0.3, release_s: float = 0.2) -> None:
        self._retry = PresenceRetry(patience_s=patience_s, release_s=release_s)

    @property
    def presses(self) -> int:
        return self._retry.presses

    def pedal(self, t: float, recorded_pedal: bool, recorded_clutch: bool,
              recorded_following: bool, following: bool) -> bool:
        # Not following where the recording did not follow either is as recorded.
        return self._retry.operator_present(t, recorded_pedal, recorded_clutch,
                                            following or not recorded_following)


class ReplaySurgeon:
    """The recorded surgeon's pedals, played through publish(topic, pressed): the clutch as
    recorded; the operator-present pedal as ReplayedPresence works it, published at once on
    a recorded change (in order with the device samples around it: the console engages on
    the sample after a press) and, between changes, whenever work_pedal is called (every
    PEDAL_PERIOD_S) for a re-press. Thread-safe."""

    def __init__(self, reference_following: list[tuple[int, bool]],
                 publish: Callable[[str, bool], None], say=print, clock=time.monotonic,
                 released_at_start: bool = False) -> None:
        self._reference_following = reference_following
        self._publish = publish
        self._say = say
        self._clock = clock
        # Nothing is pressed until the recording says how the pedals stand: a pedal held at
        # the start, published as released first, would be a fresh press and engage. Unless
        # the replay starts just before the press that engaged the recorded console
        # (released_at_start): then the pedals are released until it.
        self._recorded: dict[str, bool | None] = dict.fromkeys(
            PEDAL_TOPICS, False if released_at_start else None)
        self._presence = ReplayedPresence()
        self._pressed: bool | None = None
        self._following = False
        self._lock = threading.Lock()

    def set_following(self, following: bool) -> None:
        """What this session's console says on /console/following."""
        self._following = following

    def take(self, topic: str, pressed: bool, position_ns: int) -> None:
        """A recorded pedal message, played at position_ns into the recording."""
        with self._lock:
            self._recorded[topic] = pressed
            if topic == CLUTCH_TOPIC:
                self._publish(topic, pressed)
        self.work_pedal(position_ns)

    def work_pedal(self, position_ns: int) -> None:
        """Publish the operator-present pedal if it changes now, at position_ns into the
        recording."""
        with self._lock:
            if self._recorded[PRESENCE_TOPIC] is None:
                return
            presses = self._presence.presses
            down = self._presence.pedal(
                self._clock(), self._recorded[PRESENCE_TOPIC],
                bool(self._recorded[CLUTCH_TOPIC]),
                following_at(self._reference_following, position_ns), self._following)
            if self._presence.presses != presses:
                self._say("  replay: the console stopped following where the recording went "
                          "on; pressed operator-present again, as the surgeon would")
            if down != self._pressed:
                self._publish(PRESENCE_TOPIC, down)
                self._pressed = down
