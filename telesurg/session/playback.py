"""`telesurg demo --replay RUN_DIR`: a new session driven by a recorded one.

The recorded master bag stands in for the virtual surgeon: its device and pedal topics are
played from the moment the recorded arm was first ENABLED (the console ignores the pedals
before that, so playing earlier presses would engage at another moment; or from just before the
press that engaged the console, where the recorder took ENABLED late: replay_start), the
pedals as a ReplaySurgeon works them (telesurg.master.replayed_surgeon). How far the new arm
tip path lies from the recorded one is telesurg.analysis.playback's.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from telesurg.analysis.playback import (
    ReplayReference,
    first_engagement,
    procedure_end,
    receive_times,
    released_at_start,
    replay_start,
)
from telesurg.analysis.recording import (
    BAG_DIRS,
    decoded,
    following_changes,
    operating_states,
    pose_track,
)
from telesurg.bags.player import Player
from telesurg.bags.storage import BagError, BagReader, decode
from telesurg.contract import topics
from telesurg.contract.states import OperatingState
from telesurg.contract.topics import MASTER, PATIENT
from telesurg.master.replayed_surgeon import PEDAL_PERIOD_S, PEDAL_TOPICS, ReplaySurgeon


def _types(*contract_topics: topics.Topic) -> dict[str, str]:
    return {topic.name: topic.type_name for topic in contract_topics}


#: What the surgeon's hands and feet publish: the topics a replay plays.
SURGEON_TOPICS = _types(topics.MTM_MEASURED_CP, topics.MTM_GRIPPER_MEASURED_JS,
                        topics.CONSOLE_CLUTCH, topics.CONSOLE_OPERATOR_PRESENT)
#: The master bag also needs the arm's state and the console's following, to find the start
#: and the first engagement.
MASTER_BAG_TOPICS = {**SURGEON_TOPICS, **_types(topics.PSM_OPERATING_STATE,
                                                topics.CONSOLE_FOLLOWING, topics.PSM_SERVO_CP)}
PATIENT_BAG_TOPICS = _types(topics.PSM_MEASURED_CP)


@dataclass(frozen=True)
class ReplayPlan:
    run_dir: Path
    master_bag: Path
    start_s: float        # into the master bag: where the replay starts (replay_start)
    span_s: float         # from there to the end of the recording
    reference: ReplayReference  # what the new session's tip path is compared with
    accept_damage: bool = False  # read damaged bags without their damaged chunks
    damage: tuple[str, ...] = ()  # what damaged bags lost, then
    # The pedals are released until the recording presses them (released_at_start): the
    # replay starts just before the press that engaged the recorded console (replay_start: the
    # recorder took ENABLED late), or the recording holds no pedal state before its start.
    released_at_start: bool = False

    @classmethod
    def of(cls, run_dir: Path, accept_damage: bool = False) -> ReplayPlan:
        """Read and check RUN_DIR's bags; BagError naming the file and what is wrong (a damaged
        bag too, unless accept_damage: then damage says what it lost)."""
        run_dir = Path(run_dir)
        bags = {site: run_dir / name for site, name in BAG_DIRS.items()}
        for path in bags.values():
            if not path.exists():
                raise BagError(f"{path}: no such bag (a replay needs RUN_DIR/master_bag and "
                               "RUN_DIR/patient_bag, as `telesurg demo` or `ros2 bag record -o` "
                               "write them)")
        damage = []
        with BagReader(bags[MASTER], accept_damage) as master:
            damage += [master.damage_note] if master.damage_note else []
            master.require(MASTER_BAG_TOPICS)
            recorded = {MASTER: master.read_all([topics.PSM_OPERATING_STATE.name,
                                                 topics.CONSOLE_FOLLOWING.name,
                                                 topics.CONSOLE_OPERATOR_PRESENT.name,
                                                 topics.PSM_SERVO_CP.name])}
            states = operating_states(decoded(recorded, MASTER, topics.PSM_OPERATING_STATE))
            enabled = next((t for t, state in states if state == OperatingState.ENABLED), None)
            if enabled is None:
                raise BagError(f"{bags['master']}: the arm was never ENABLED in this recording; "
                               "nothing to replay")
            following = following_changes(decoded(recorded, MASTER, topics.CONSOLE_FOLLOWING))
            presses = following_changes(
                decoded(recorded, MASTER, topics.CONSOLE_OPERATOR_PRESENT))
            start = replay_start(enabled, following, presses)
            engaged = first_engagement(following, start)
            if engaged is None:
                raise BagError(f"{bags['master']}: the console never followed in this "
                               "recording; nothing to replay")
            start_s = (start - master.start_ns) * 1e-9
            span_s = (master.end_ns - start) * 1e-9
        with BagReader(bags[PATIENT], accept_damage) as patient:
            damage += [patient.damage_note] if patient.damage_note else []
            patient.require(PATIENT_BAG_TOPICS)
            recorded[PATIENT] = patient.read_all([topics.PSM_MEASURED_CP.name])
        return cls(run_dir, bags[MASTER], start_s, span_s, ReplayReference(
            start, engaged, following,
            receive_times(recorded[MASTER][topics.PSM_SERVO_CP.name]),
            pose_track(decoded(recorded, PATIENT, topics.PSM_MEASURED_CP)),
            procedure_end(states)), accept_damage, tuple(damage),
            released_at_start(start, enabled, presses))

    def start_player(self, node, go: threading.Event, stop: threading.Event,
                     say=print) -> tuple[threading.Thread, Player]:
        """Play the recorded surgeon on node (in the master site's domain) in a thread: the
        device held at its pose at the start until go is set (the session is up and the arm
        ENABLED, as it was at the start), then with the recorded timing to the end of the
        recording or until stop is set; its pedals through a ReplaySurgeon."""
        from std_msgs.msg import Bool

        from telesurg.ros.qos import subscription

        reader = BagReader(self.master_bag, self.accept_damage)
        surgeon = ReplaySurgeon(
            self.reference.following,
            lambda topic, pressed: player.publishers[topic].publish(Bool(data=pressed)), say,
            released_at_start=self.released_at_start)

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
