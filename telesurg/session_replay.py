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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from telesurg.bag import BagError, BagReader
from telesurg.metrics import in_step_until, path_deviation, percentiles
from telesurg.replay import Player

#: What the surgeon's hands and feet publish: the topics a replay plays.
SURGEON_TOPICS = {
    "/mtm/measured_cp": "geometry_msgs/msg/PoseStamped",
    "/mtm/gripper/measured_js": "sensor_msgs/msg/JointState",
    "/console/clutch": "std_msgs/msg/Bool",
    "/console/operator_present": "std_msgs/msg/Bool",
}
#: The master bag also needs the arm's state and the console's following, to find the start
#: and the first engagement.
MASTER_BAG_TOPICS = {**SURGEON_TOPICS, "/psm/operating_state": "std_msgs/msg/String",
                     "/console/following": "std_msgs/msg/Bool"}
PATIENT_BAG_TOPICS = {"/psm/measured_cp": "geometry_msgs/msg/PoseStamped"}
BAG_DIRS = {"master": "master_bag", "patient": "patient_bag"}
#: How far from the aligned time a replayed tip position may match the recorded path: the
#: stalls of a busy machine delay either session by this order, in time but not in space.
REPLAY_WINDOW_MS = 100.0


def _decode(data: bytes, type_name: str):
    from rclpy.serialization import deserialize_message

    from telesurg.bridge_config import message_class

    return deserialize_message(data, message_class(type_name))


def tip_path(messages: list[tuple[int, bytes]]) -> tuple[np.ndarray, np.ndarray]:
    """Header stamps (ns) and tip positions (m) of recorded /psm/measured_cp messages."""
    poses = [_decode(data, PATIENT_BAG_TOPICS["/psm/measured_cp"]) for _, data in messages]
    stamps = np.array([m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in poses],
                      dtype=np.int64)
    points = np.array([[m.pose.position.x, m.pose.position.y, m.pose.position.z]
                       for m in poses]).reshape(-1, 3)
    order = np.argsort(stamps, kind="stable")
    return stamps[order], points[order]


def following_changes(following: list[tuple[int, bytes]]) -> list[tuple[int, bool]]:
    return [(t, _decode(data, "std_msgs/msg/Bool").data) for t, data in following]


def first_engagement(following: list[tuple[int, bytes]], after_ns: int) -> int | None:
    """Receive time of the first /console/following True at or after after_ns."""
    return next((t for t, data in following
                 if t >= after_ns and _decode(data, "std_msgs/msg/Bool").data), None)


@dataclass(frozen=True)
class ReplayPlan:
    run_dir: Path
    master_bag: Path
    start_s: float        # into the master bag: when the recorded arm was first ENABLED
    span_s: float         # from there to the end of the recording
    reference_engage_ns: int
    reference_following: list   # (receive time ns, following) at the master site
    reference_ns: np.ndarray
    reference_tips: np.ndarray

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
        with BagReader(bags["master"]) as master:
            master.require(MASTER_BAG_TOPICS)
            recorded = master.read_all(["/psm/operating_state", "/console/following"])
            enabled = next((t for t, data in recorded["/psm/operating_state"]
                            if _decode(data, "std_msgs/msg/String").data == "ENABLED"), None)
            if enabled is None:
                raise BagError(f"{bags['master']}: the arm was never ENABLED in this recording; "
                               "nothing to replay")
            engaged = first_engagement(recorded["/console/following"], enabled)
            if engaged is None:
                raise BagError(f"{bags['master']}: the console never followed in this "
                               "recording; nothing to replay")
            start_s = (enabled - master.start_ns) * 1e-9
            span_s = (master.end_ns - enabled) * 1e-9
        with BagReader(bags["patient"]) as patient:
            patient.require(PATIENT_BAG_TOPICS)
            stamps, tips = tip_path(patient.read_all(["/psm/measured_cp"])["/psm/measured_cp"])
        return cls(run_dir, bags["master"], start_s, span_s, engaged,
                   following_changes(recorded["/console/following"]), stamps, tips)

    def start_player(self, node, go: threading.Event,
                     stop: threading.Event) -> threading.Thread:
        """Play the recorded surgeon on node (in the master site's domain) in a thread: the
        device held at its pose at the start until go is set (the session is up and the arm
        ENABLED, as it was at the start), then with the recorded timing to the end of the
        recording or until stop is set."""
        reader = BagReader(self.master_bag)
        player = Player(node, reader, list(SURGEON_TOPICS), self.start_s)

        def play() -> None:
            with reader:
                player.hold(lambda: go.is_set() or stop.is_set())
                player.play(stop)
        thread = threading.Thread(target=play, name="demo-replay", daemon=True)
        thread.start()
        return thread

    def deviation(self, messages: dict) -> dict:
        """How far the new session's arm tip path (its recorded messages by site and topic)
        lies from the recorded one, from the first engagement for replay_compared_s: as long
        as the console followed exactly when it did in the recording (replay_in_step_to_end
        false if a pause or a stall in one session only ended that early).
        replay_deviation_mm: each tip position's distance to the recorded path within
        REPLAY_WINDOW_MS of the aligned time; replay_deviation_rigid_mm: to the recorded
        position at the aligned time itself, which also counts the sessions' timing jitter
        (a 50 ms stall at 20 mm/s is 1 mm); replay_offset_ms: the fitted time offset beyond
        the alignment on the first engagement."""
        following = messages["master"].get("/console/following", [])
        engaged = first_engagement(following, 0)
        stamps, tips = tip_path(messages["patient"].get("/psm/measured_cp", []))
        if engaged is None or not stamps.size:
            return {"replay_deviation_mm": percentiles([]),
                    "replay_deviation_rigid_mm": percentiles([]), "replay_compared_s": 0.0,
                    "replay_in_step_to_end": False, "replay_offset_ms": None}
        anchor = engaged - self.reference_engage_ns
        end = min(int(stamps[-1]), int(self.reference_ns[-1]) + anchor)
        in_step = in_step_until(self.reference_following, following_changes(following),
                                anchor, engaged, end)
        # Before the engagement both arms only held their start pose.
        compared = (stamps >= engaged) & (stamps <= in_step)
        paths = (self.reference_ns, self.reference_tips, stamps[compared], tips[compared])
        offset, rigid = path_deviation(*paths, anchor)
        _, windowed = path_deviation(*paths, offset, search_ns=0,
                                     window_ns=int(REPLAY_WINDOW_MS * 1e6))
        return {"replay_deviation_mm": percentiles(windowed, 1000.0),
                "replay_deviation_rigid_mm": percentiles(rigid, 1000.0),
                "replay_window_ms": REPLAY_WINDOW_MS,
                "replay_compared_s": round((in_step - engaged) * 1e-9, 3),
                "replay_in_step_to_end": in_step == end,
                "replay_offset_ms": round((offset - anchor) * 1e-6, 3)}
