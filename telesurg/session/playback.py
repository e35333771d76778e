"""`telesurg demo --replay RUN_DIR`: a new session driven by a recorded one, and how far the
new arm tip path lies from the recorded one.

The recorded master bag stands in for the virtual surgeon: its device and pedal topics are
played from the moment the recorded arm was first ENABLED (the console ignores the pedals
before that, so playing earlier presses would engage at another moment). The two paths are
aligned on the first engagement after that moment, then by the constant time offset that
fits best.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from telesurg.analysis.metrics import (
    FollowingStretch,
    clipped_intervals,
    command_gaps,
    following_stretches,
    path_at,
    path_deviation,
    percentiles,
)
from telesurg.analysis.recording import BAG_DIRS
from telesurg.bags.player import Player
from telesurg.bags.storage import BagError, BagReader, decode
from telesurg.contract import topics
from telesurg.contract.fields import stamp_ns, tip_position
from telesurg.contract.states import OperatingState
from telesurg.contract.topics import MASTER, PATIENT
from telesurg.master.surgeon import PresenceRetry


def _types(*contract_topics: topics.Topic) -> dict[str, str]:
    return {topic.name: topic.type_name for topic in contract_topics}


#: What the surgeon's hands and feet publish: the topics a replay plays.
SURGEON_TOPICS = _types(topics.MTM_MEASURED_CP, topics.MTM_GRIPPER_MEASURED_JS,
                        topics.CONSOLE_CLUTCH, topics.CONSOLE_OPERATOR_PRESENT)
PRESENCE_TOPIC, CLUTCH_TOPIC = topics.CONSOLE_OPERATOR_PRESENT.name, topics.CONSOLE_CLUTCH.name
PEDAL_TOPICS = (PRESENCE_TOPIC, CLUTCH_TOPIC)
#: The master bag also needs the arm's state and the console's following, to find the start
#: and the first engagement.
MASTER_BAG_TOPICS = {**SURGEON_TOPICS, **_types(topics.PSM_OPERATING_STATE,
                                                topics.CONSOLE_FOLLOWING, topics.PSM_SERVO_CP)}
PATIENT_BAG_TOPICS = _types(topics.PSM_MEASURED_CP)
#: How far from the aligned time a replayed tip position may match the recorded path: the
#: stalls of a busy machine delay either session by this order, in time but not in space.
REPLAY_WINDOW_MS = 100.0
#: After a gap in a console's commands, how long its arm is given to catch up before the
#: comparison resumes (at the arm controller's 0.1 m/s a 2 mm step, the most a console sends
#: without disengaging, takes 20 ms).
CATCH_UP_MS = 50.0
#: How often the replay works the operator-present pedal.
PEDAL_PERIOD_S = 0.01


def tip_path(messages: list[tuple[int, bytes]]) -> tuple[np.ndarray, np.ndarray]:
    """Header stamps (ns) and tip positions (m) of recorded /psm/measured_cp messages."""
    poses = [decode(data, topics.PSM_MEASURED_CP.type_name) for _, data in messages]
    stamps = np.array([stamp_ns(m) for m in poses], dtype=np.int64)
    points = np.array([tip_position(m) for m in poses]).reshape(-1, 3)
    order = np.argsort(stamps, kind="stable")
    return stamps[order], points[order]


def receive_times(messages: list[tuple[int, bytes]]) -> np.ndarray:
    return np.array([t for t, _ in messages], dtype=np.int64)


def following_changes(following: list[tuple[int, bytes]]) -> list[tuple[int, bool]]:
    return [(t, decode(data, topics.CONSOLE_FOLLOWING.type_name).data) for t, data in following]


def first_engagement(following: list[tuple[int, bytes]], after_ns: int) -> int | None:
    """Receive time of the first /console/following True at or after after_ns."""
    type_name = topics.CONSOLE_FOLLOWING.type_name
    return next((t for t, data in following if t >= after_ns and decode(data, type_name).data),
                None)


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
                 publish: Callable[[str, bool], None], say=print, clock=time.monotonic) -> None:
        self._reference_following = reference_following
        self._publish = publish
        self._say = say
        self._clock = clock
        # Nothing is pressed until the recording says how the pedals stand: a pedal held at
        # the start, published as released first, would be a fresh press and engage.
        self._recorded: dict[str, bool | None] = dict.fromkeys(PEDAL_TOPICS)
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


@dataclass(frozen=True)
class ReplayPlan:
    run_dir: Path
    master_bag: Path
    start_s: float        # into the master bag: when the recorded arm was first ENABLED
    span_s: float         # from there to the end of the recording
    reference_engage_ns: int
    reference_following: list   # (receive time ns, following) at the master site
    reference_commands: np.ndarray  # receive times (ns) of the console's /psm/servo_cp
    reference_ns: np.ndarray
    reference_tips: np.ndarray
    start_ns: int         # the bag time of start_s

    @classmethod
    def of(cls, run_dir: Path) -> ReplayPlan:
        """Read and check RUN_DIR's bags; BagError naming the file and what is wrong."""
        run_dir = Path(run_dir)
        bags = {site: run_dir / name for site, name in BAG_DIRS.items()}
        for path in bags.values():
            if not path.exists():
                raise BagError(f"{path}: no such bag (a replay needs RUN_DIR/master_bag and "
                               "RUN_DIR/patient_bag, as `telesurg demo` or `ros2 bag record -o` "
                               "write them)")
        with BagReader(bags[MASTER]) as master:
            master.require(MASTER_BAG_TOPICS)
            states, following, servo = (topics.PSM_OPERATING_STATE, topics.CONSOLE_FOLLOWING,
                                        topics.PSM_SERVO_CP)
            recorded = master.read_all([states.name, following.name, servo.name])
            enabled = next((t for t, data in recorded[states.name]
                            if decode(data, states.type_name).data == OperatingState.ENABLED),
                           None)
            if enabled is None:
                raise BagError(f"{bags['master']}: the arm was never ENABLED in this recording; "
                               "nothing to replay")
            engaged = first_engagement(recorded[topics.CONSOLE_FOLLOWING.name], enabled)
            if engaged is None:
                raise BagError(f"{bags['master']}: the console never followed in this "
                               "recording; nothing to replay")
            start_s = (enabled - master.start_ns) * 1e-9
            span_s = (master.end_ns - enabled) * 1e-9
        with BagReader(bags[PATIENT]) as patient:
            patient.require(PATIENT_BAG_TOPICS)
            measured = topics.PSM_MEASURED_CP.name
            stamps, tips = tip_path(patient.read_all([measured])[measured])
        return cls(run_dir, bags[MASTER], start_s, span_s, engaged,
                   following_changes(recorded[topics.CONSOLE_FOLLOWING.name]),
                   receive_times(recorded[topics.PSM_SERVO_CP.name]), stamps, tips, enabled)

    def start_player(self, node, go: threading.Event, stop: threading.Event,
                     say=print) -> tuple[threading.Thread, Player]:
        """Play the recorded surgeon on node (in the master site's domain) in a thread: the
        device held at its pose at the start until go is set (the session is up and the arm
        ENABLED, as it was at the start), then with the recorded timing to the end of the
        recording or until stop is set; its pedals through a ReplaySurgeon."""
        from std_msgs.msg import Bool

        from telesurg.ros.qos import subscription

        reader = BagReader(self.master_bag)
        surgeon = ReplaySurgeon(
            self.reference_following,
            lambda topic, pressed: player.publishers[topic].publish(Bool(data=pressed)), say)

        def taker(topic: str):
            return lambda data: surgeon.take(topic, decode(data, SURGEON_TOPICS[topic]).data,
                                             player.position_ns)

        player = Player(node, reader, list(SURGEON_TOPICS), self.start_s,
                        intercept={topic: taker(topic) for topic in PEDAL_TOPICS})
        subscription(node, topics.CONSOLE_FOLLOWING, lambda msg: surgeon.set_following(msg.data))

        def play() -> None:
            with reader:
                player.hold(lambda: go.is_set() or stop.is_set())
                player.play(stop)

        def work_pedal() -> None:
            while thread.is_alive() and not stop.wait(PEDAL_PERIOD_S):
                surgeon.work_pedal(player.position_ns)
        thread = threading.Thread(target=play, name="demo-replay", daemon=True)
        thread.start()
        threading.Thread(target=work_pedal, name="demo-replay-pedal", daemon=True).start()
        return thread, player

    def deviation(self, messages: dict, played_at_ns: int | None) -> dict:
        """How far the new session's arm tip path (its recorded messages by site and topic)
        lies from the recorded one, over the stretches from the first engagement on in which
        both consoles followed (replay_compared_s of the reference's replay_following_s).

        replay_deviation_mm: each tip position's distance to the recorded path within
        REPLAY_WINDOW_MS of the aligned time; replay_deviation_rigid_mm: to the recorded
        position at the aligned time itself, which also counts the sessions' timing jitter
        (a 50 ms stall at 20 mm/s is 1 mm); replay_offset_ms: the fitted time offset beyond
        the alignment. replay_differences counts the moments at which
        one console followed and the other not for over 100 ms (a pause of one session
        only): every stretch after the first of them starts with the arms at different places
        and is compared relative to its start (replay_rebased_stretches of
        replay_stretches); replay_in_step_to_end says there was none."""
        following = messages[MASTER].get(topics.CONSOLE_FOLLOWING.name, [])
        engaged = first_engagement(following, 0)
        stamps, tips = tip_path(messages[PATIENT].get(topics.PSM_MEASURED_CP.name, []))
        if engaged is None or not stamps.size:
            return {"replay_deviation_mm": percentiles([]),
                    "replay_deviation_rigid_mm": percentiles([]), "replay_compared_s": 0.0,
                    "replay_following_s": 0.0, "replay_stretches": 0,
                    "replay_rebased_stretches": 0, "replay_differences": 0,
                    "replay_in_step_to_end": False, "replay_offset_ms": None}
        # Aligned by the player's clock: the recording's start was played at played_at_ns
        # (the consoles may engage at different moments, if one stalls or the recorder
        # joined late and missed a press); else on the first engagement.
        anchor = (played_at_ns - self.start_ns if played_at_ns is not None
                  else engaged - self.reference_engage_ns)
        # From the first engagement of either (an earlier one in the recording is a
        # difference too: its arm moved first).
        engaged = min(engaged, self.reference_engage_ns + anchor)
        end = min(int(stamps[-1]), int(self.reference_ns[-1]) + anchor)
        changes = following_changes(following)
        shifted = [(t + anchor, f) for t, f in self.reference_following]
        # Where either console's commands stopped, its arm stood: not compared.
        gap, catch_up = int(REPLAY_WINDOW_MS * 1e6), int(CATCH_UP_MS * 1e6)
        stood = (command_gaps(clipped_intervals(changes, engaged, end),
                              receive_times(messages[MASTER].get(topics.PSM_SERVO_CP.name, [])),
                              gap, catch_up)
                 + command_gaps(clipped_intervals(shifted, engaged, end),
                                self.reference_commands + anchor, gap, catch_up))
        stretches, differences = following_stretches(
            self.reference_following, changes, anchor, engaged, end, excluded=stood)
        reference = (self.reference_ns, self.reference_tips)
        # The time offset is fitted where the arms should stand at the same places.
        absolute = _inside(stamps, [s for s in stretches if not s.rebased])
        offset = (path_deviation(*reference, stamps[absolute], tips[absolute], anchor)[0]
                  if absolute.any() else anchor)
        windowed, rigid = [], []
        for stretch in stretches:
            inside = _inside(stamps, [stretch])
            points = tips[inside]
            if stretch.rebased:
                points = points - (path_at(stamps, tips, stretch.start_ns)
                                   - path_at(*reference, stretch.start_ns - offset))
            paths = (*reference, stamps[inside], points, offset)
            windowed.append(path_deviation(*paths, search_ns=0,
                                           window_ns=int(REPLAY_WINDOW_MS * 1e6))[1])
            rigid.append(path_deviation(*paths, search_ns=0)[1])
        reference_following = clipped_intervals(shifted, engaged, end)
        return {"replay_deviation_mm": percentiles(_joined(windowed), 1000.0),
                "replay_deviation_rigid_mm": percentiles(_joined(rigid), 1000.0),
                "replay_window_ms": REPLAY_WINDOW_MS,
                "replay_compared_s": round(sum(s.end_ns - s.start_ns for s in stretches) * 1e-9,
                                           3),
                "replay_following_s": round(sum(e - s for s, e in reference_following) * 1e-9,
                                            3),
                "replay_stretches": len(stretches),
                "replay_rebased_stretches": sum(s.rebased for s in stretches),
                "replay_differences": differences,
                "replay_in_step_to_end": differences == 0,
                "replay_offset_ms": round((offset - anchor) * 1e-6, 3)}


def _inside(stamps: np.ndarray, stretches: list[FollowingStretch]) -> np.ndarray:
    inside = np.zeros(stamps.shape, dtype=bool)
    for stretch in stretches:
        inside |= (stamps >= stretch.start_ns) & (stamps <= stretch.end_ns)
    return inside


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.array([])
