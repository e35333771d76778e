"""`telesurg replay` and what it is made of.

Pure parts first: the schedule, the states in force at a start time, the topics asked for, the
QoS offered, and the metrics a replayed session is judged by. Then the command as a real
process playing bags laid out as `ros2 bag record` writes them (MCAP and sqlite3) to this test
process: every message, values and order kept, with the recorded timing (and --topics, --start,
--rate); and bags it cannot play refused in one line, as `telesurg demo --replay` does.
"""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
import yaml
from crtk_msgs.msg import OperatingState, StringStamped
from geometry_msgs.msg import PoseStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import StoragePlugin, Writer
from std_msgs.msg import Bool, String

from telesurg.analysis.metrics import command_gaps, following_stretches, path_deviation
from telesurg.analysis.playback import (
    BEFORE_PRESS_NS,
    ReplayReference,
    procedure_end,
    released_at_start,
    replay_start,
)
from telesurg.analysis.recording import Track
from telesurg.bags.player import check_topics, latched_before, publisher_qos, schedule
from telesurg.bags.storage import TYPESTORE, BagError, BagReader, BagTopic, BagWriter, make_qos
from telesurg.master.replayed_surgeon import (
    CLUTCH_TOPIC,
    PRESENCE_TOPIC,
    ReplayedPresence,
    ReplaySurgeon,
    following_at,
)

MS = 1_000_000
S = 1_000_000_000
DISCOVERY_TIMEOUT_S = 20.0  # the player's own wait (--wait-subscribers 10) and start-up
CLI_TIMEOUT_S = 60.0
START_NS = 1_795_000_000_000_000_000

# -- pure parts ----------------------------------------------------------------------------


def test_schedule_places_each_message_at_its_offset_from_the_start_divided_by_the_rate():
    offsets_ms = (0, 100, 250, 1000)
    messages = [("/a" if t < 500 else "/b", START_NS + t * MS, f"m{t}".encode())
                for t in offsets_ms]
    played = list(schedule(iter(messages), START_NS, 1.0, 50.0))
    assert [(topic, data) for _, topic, data in played] == [(t, d) for t, _, d in messages]
    assert [due for due, _, _ in played] == pytest.approx([50.0, 50.1, 50.25, 51.0])
    halved = list(schedule(iter(messages), START_NS, 2.0, 0.0))
    assert [due for due, _, _ in halved] == pytest.approx([0.0, 0.05, 0.125, 0.5])
    # From a start time on: earlier messages skipped, offsets from the start time.
    later = list(schedule(iter(messages), START_NS + 200 * MS, 0.5, 10.0))
    assert [data for _, _, data in later] == [b"m250", b"m1000"]
    assert [due for due, _, _ in later] == pytest.approx([10.1, 11.6])


STATE = make_qos(1, 1, 1, 1)       # reliable, transient local
EVENT = make_qos(1, 10, 1, 2)      # reliable, volatile
STREAM = make_qos(1, 1, 2, 2)      # best effort, volatile


def write_bag(path: Path, messages, qos: dict, types: dict | None = None, storage="mcap"):
    """A bag of (topic, offset ns, message) written with BagWriter."""
    writer = BagWriter(path, storage)
    for topic, offered in qos.items():
        writer.add_topic(topic, (types or {}).get(topic, "std_msgs/msg/String"), [offered])
    for topic, offset, message in messages:
        writer.write(topic, START_NS + offset, serialize_message(message))
    writer.close()


def test_latched_before_gives_each_states_last_value_before_the_start_in_time_order(tmp_path):
    messages = [("/mode", 0, String(data="mode 0")), ("/level", 10 * MS, String(data="level 1")),
                ("/mode", 20 * MS, String(data="mode 2")),
                ("/event", 25 * MS, String(data="event")),
                ("/level", 30 * MS, String(data="level 3")),
                ("/mode", 40 * MS, String(data="mode 4")),
                ("/level", 60 * MS, String(data="level 6"))]
    write_bag(tmp_path / "bag", messages, {"/mode": STATE, "/level": STATE, "/event": EVENT})

    def latched(topics, start_ms):
        with BagReader(tmp_path / "bag") as reader:
            return [(topic, deserialize_message(data, String).data)
                    for topic, data in latched_before(reader, topics, START_NS + start_ms * MS)]

    everything = ["/mode", "/level", "/event"]
    assert latched(everything, 35) == [("/mode", "mode 2"), ("/level", "level 3")]
    assert latched(everything, 50) == [("/level", "level 3"), ("/mode", "mode 4")]
    assert latched(everything, 40) == [("/mode", "mode 2"), ("/level", "level 3")]  # before
    assert latched(["/level", "/event"], 35) == [("/level", "level 3")]  # volatile: never
    assert latched(everything, 0) == [] and latched(everything, 5) == [("/mode", "mode 0")]
    assert latched(everything, 1000) == [("/mode", "mode 4"), ("/level", "level 6")]


def test_check_topics_plays_all_or_those_asked_for_and_names_the_missing(tmp_path):
    write_bag(tmp_path / "bag", [("/a", 0, String(data="a"))], {"/a": STATE, "/b": EVENT})
    with BagReader(tmp_path / "bag") as reader:
        assert check_topics(reader, None) == ["/a", "/b"]
        assert check_topics(reader, []) == ["/a", "/b"]
        assert check_topics(reader, ["/b"]) == ["/b"]
        with pytest.raises(BagError) as error:
            check_topics(reader, ["/a", "/nope", "/gone"])
    message = str(error.value)
    assert str(tmp_path / "bag") in message and "/nope, /gone" in message
    assert "it has /a, /b" in message and "\n" not in message


INFINITE = QosTime(9223372036, 854775807)


def discovered_qos(reliability: QosReliability, durability: QosDurability) -> Qos:
    """A publisher's QoS as rosbag2 records it from discovery: history and depth unknown."""
    return Qos(QosHistory.UNKNOWN, 0, reliability, durability, INFINITE, INFINITE,
               QosLiveliness.AUTOMATIC, INFINITE, False)


@pytest.mark.parametrize("reliability, durability", [
    (QosReliability.BEST_EFFORT, QosDurability.VOLATILE),
    (QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL),
    (QosReliability.RELIABLE, QosDurability.VOLATILE)])
def test_publisher_qos_keeps_reliability_and_durability_and_makes_unknown_history_keep_last_1(
        reliability, durability):
    topic = BagTopic("/t", "std_msgs/msg/String", 3, (discovered_qos(reliability, durability),))
    qos = publisher_qos(topic)
    assert (qos.history, qos.depth) == (HistoryPolicy.KEEP_LAST, 1)
    assert qos.reliability == ReliabilityPolicy(reliability.value)
    assert qos.durability == DurabilityPolicy(durability.value)
    # A known history and depth (telesurg's own publishers, by another recorder) are kept.
    known = BagTopic("/t", "std_msgs/msg/String", 3, (make_qos(1, 7, reliability.value,
                                                               durability.value),))
    assert (publisher_qos(known).history, publisher_qos(known).depth) == (
        HistoryPolicy.KEEP_LAST, 7)
    # No recorded QoS: the ROS default (reliable, volatile, keep last 10).
    default = publisher_qos(BagTopic("/t", "std_msgs/msg/String", 3, ()))
    assert (default.reliability, default.durability, default.depth) == (
        ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE, 10)


def reference_path(stamps_ns: np.ndarray) -> np.ndarray:
    """A tip path in the x-y plane: a circle of 20 mm at 0.8 Hz drifting 10 mm/s along y."""
    t = (stamps_ns - stamps_ns[0]) * 1e-9
    angle = 2 * np.pi * 0.8 * t
    return np.stack([0.02 * np.cos(angle), 0.02 * np.sin(angle) + 0.01 * t,
                     np.full_like(t, -0.1)], axis=1)


def test_path_deviation_finds_the_time_offset_and_the_distance_to_the_reference():
    stamps = START_NS + np.arange(0, 3000, 2, dtype=np.int64) * MS
    path = reference_path(stamps)
    # The same path replayed 37 ms later: found from a guess of 0, and on the path.
    offset, distances = path_deviation(stamps, path, stamps + 37 * MS, path, 0)
    assert offset == 37 * MS
    assert distances.size >= 0.95 * stamps.size
    assert distances.max() < 1e-9
    # Displaced 1 mm off the plane: 1 mm everywhere, at the right time.
    offset, distances = path_deviation(stamps, path, stamps, path + [0.0, 0.0, 0.001], 0)
    assert offset == 0
    np.testing.assert_allclose(distances, 0.001, atol=1e-9)
    # Searching away from a wrong guess is limited to search_ns.
    offset, _ = path_deviation(stamps, path, stamps + 37 * MS, path, -400 * MS,
                               search_ns=200 * MS)
    assert offset == -200 * MS
    # A replay without samples inside the reference's time span has nothing to compare.
    _, distances = path_deviation(stamps, path, stamps + 10 * S, path, 0, search_ns=0)
    assert distances.size == 0


def spans(stretches):
    return [(s.start_ns, s.end_ns, s.rebased) for s in stretches]


def test_following_stretches_where_both_follow_rebased_after_a_lasting_difference():
    offset = 2 * S
    reference = [(1 * S, True), (3 * S, False), (4 * S, True)]
    replay = [(t + offset, following) for t, following in reference]
    end = 12 * S
    stretches, differences = following_stretches(reference, replay, offset, 0, end)
    assert spans(stretches) == [(3 * S, 5 * S, False), (6 * S, end, False)]
    assert differences == 0
    # The replay stops following for 500 ms that the reference followed through (a stall
    # of its console): compared on both sides, and after it relative to where it starts.
    paused = sorted(replay + [(offset + 5 * S, False), (offset + 5_500 * MS, True)])
    stretches, differences = following_stretches(reference, paused, offset, 0, end)
    assert spans(stretches) == [(3 * S, 5 * S, False), (6 * S, 7 * S, False),
                                (7_500 * MS, end, True)]
    assert differences == 1
    # The reference pauses, the replay does not: the same.
    stretches, differences = following_stretches(
        sorted(reference + [(5 * S, False), (5_500 * MS, True)]), replay, offset, 0, end)
    assert spans(stretches)[-1] == (7_500 * MS, end, True) and differences == 1
    # Engaging 50 ms late is timing within the 100 ms tolerance; 150 ms late is a difference.
    late = [(t + offset + (50 * MS if t == 4 * S else 0), f) for t, f in reference]
    stretches, differences = following_stretches(reference, late, offset, 0, end)
    assert spans(stretches)[-1] == (6_050 * MS, end, False) and differences == 0
    later = [(t + offset + (150 * MS if t == 4 * S else 0), f) for t, f in reference]
    stretches, differences = following_stretches(reference, later, offset, 0, end)
    assert spans(stretches)[-1] == (6_150 * MS, end, True) and differences == 1
    # Differences before from_ns do not count.
    stretches, differences = following_stretches(reference, later, offset, 7 * S, end)
    assert spans(stretches) == [(7 * S, end, False)] and differences == 0


def test_following_stretches_leave_out_excluded_moments_and_the_shortest_pieces():
    changes = [(1 * S, True)]
    stretches, differences = following_stretches(
        changes, changes, 0, 0, 5 * S, excluded=[(2 * S, 2_500 * MS), (4_980 * MS, 6 * S)])
    # A command gap cut out is no difference in following; 20 ms left at the end is too short.
    assert spans(stretches) == [(1 * S, 2 * S, False), (2_500 * MS, 4_980 * MS, False)]
    assert differences == 0


def test_command_gaps_are_the_silences_of_a_following_console_with_its_catch_up():
    commands = np.array([1_000, 1_004, 1_008, 1_200, 1_204, 1_290], dtype=np.int64) * MS
    following = [(1_000 * MS, 1_300 * MS), (2_000 * MS, 2_500 * MS)]
    gaps = command_gaps(following, commands, gap_ns=100 * MS, settle_ns=50 * MS)
    # 192 ms without a command while following, then 50 ms to catch up; the second interval
    # had no command at all. The 86 ms gap and the time not following are not gaps.
    assert gaps == [(1_008 * MS, 1_250 * MS), (2_000 * MS, 2_550 * MS)]


def recorded_session(stamps_ns, tips, following, commands_ns):
    """A session's messages as the demo reads them from its bags (receive time, bytes)."""
    def tip(t, point):
        message = PoseStamped()
        message.header.stamp.sec, message.header.stamp.nanosec = divmod(int(t), S)
        message.pose.position.x, message.pose.position.y, message.pose.position.z = point
        return int(t), serialize_message(message)

    return {"master": {"/console/following": [(t, serialize_message(Bool(data=f)))
                                              for t, f in following],
                       "/psm/servo_cp": [(int(t), b"") for t in commands_ns]},
            "patient": {"/psm/measured_cp": [tip(t, p) for t, p in zip(stamps_ns, tips,
                                                                       strict=True)]}}


def test_replay_deviation_compares_where_both_followed_and_rebases_after_a_pause():
    stamps = START_NS + np.arange(0, 10_000, 10, dtype=np.int64) * MS  # 100 Hz tips, 10 s
    path = reference_path(stamps)
    path[stamps < START_NS + 1 * S] = path[stamps >= START_NS + 1 * S][0]  # held until 1 s
    engage = START_NS + 1 * S
    commands = np.arange(engage, stamps[-1], 4 * MS)
    reference = ReplayReference(START_NS, engage, [(engage, True)], commands, Track(stamps, path))

    # The same session again, 3 s later: in step to the end, on the path.
    later = 3 * S
    same = recorded_session(stamps + later, path, [(engage + later, True)], commands + later)
    # Aligned by the player's clock (the recording's start played 3 s later) or, without
    # it, on the first engagement: the same.
    for played_at in (START_NS + later, None):
        figures = reference.deviation(same, played_at)
        assert figures["replay_deviation_mm"]["max"] < 1e-6
    assert figures["replay_deviation_mm"]["max"] < 1e-6
    assert figures["replay_in_step_to_end"] and figures["replay_differences"] == 0
    assert figures["replay_compared_s"] == pytest.approx(9.0, abs=0.02)
    assert figures["replay_following_s"] == pytest.approx(9.0, abs=0.02)

    # 1 mm off along z: 1 mm.
    off = reference.deviation(recorded_session(stamps + later, path + [0.0, 0.0, 0.001],
                                          [(engage + later, True)], commands + later),
                         START_NS + later)
    assert off["replay_deviation_mm"]["p50"] == pytest.approx(1.0, abs=1e-3)

    # The replay's console stops following from 4 s to 4.5 s (its arm stands) and is engaged
    # again: from there on its arm moves alike, 0.5 s of motion behind where the recording's
    # was. Compared relative to that start, it is on the path again.
    pause, resume = START_NS + 4 * S, START_NS + 4_500 * MS
    paused = path.copy()
    standing = (stamps >= pause) & (stamps < resume)
    paused[standing] = path[stamps == pause][0]
    after = stamps >= resume
    paused[after] = path[after] - (path[stamps == resume][0] - path[stamps == pause][0])
    replay = recorded_session(
        stamps + later, paused,
        [(engage + later, True), (pause + later, False), (resume + later, True)],
        commands[(commands < pause) | (commands >= resume)] + later)
    figures = reference.deviation(replay, START_NS + later)
    assert figures["replay_deviation_mm"]["max"] < 1e-6
    assert (figures["replay_stretches"], figures["replay_rebased_stretches"]) == (2, 1)
    assert figures["replay_differences"] == 1 and not figures["replay_in_step_to_end"]
    assert figures["replay_compared_s"] == pytest.approx(8.5, abs=0.02)
    # The replay engages 0.9 s after the recording did (its recorder had joined late and missed
    # the press): aligned by the player's clock, it is compared from there, relative.
    late = engage + 900 * MS
    behind = path.copy()
    behind[stamps < late] = path[stamps == engage][0]
    behind[stamps >= late] -= path[stamps == late][0] - path[stamps == engage][0]
    figures = reference.deviation(recorded_session(stamps + later, behind, [(late + later, True)],
                                              commands[commands >= late] + later),
                             START_NS + later)
    assert figures["replay_deviation_mm"]["max"] < 1e-6
    assert figures["replay_rebased_stretches"] == figures["replay_stretches"] == 1
    assert figures["replay_compared_s"] == pytest.approx(8.1, abs=0.02)
    # Without the rebase the second stretch would be off by the motion of that half second.
    gap_mm = 1000 * np.linalg.norm(path[stamps == resume][0] - path[stamps == pause][0])
    assert gap_mm > 10


def test_a_replay_starts_at_the_recorded_enable_or_before_the_press_that_engaged_earlier():
    enabled = START_NS + 2 * S
    presses = [(START_NS + S, False), (START_NS + S + 300 * MS, True),
               (START_NS + 5 * S, False), (START_NS + 6 * S, True)]
    # The console first followed after ENABLED reached the recorder: start there.
    assert replay_start(enabled, [(enabled + 100 * MS, True)], presses) == enabled
    # It followed before (the recorder took the latched ENABLED late): just before the press
    # that engaged it, the last one up to that engagement.
    engaged = START_NS + S + 320 * MS
    assert (replay_start(enabled, [(engaged, True), (START_NS + 5 * S, False)], presses)
            == START_NS + S + 300 * MS - BEFORE_PRESS_NS)
    # No press recorded before it (the recorder took the pedal late too): the engagement.
    assert (replay_start(enabled, [(engaged, True)], presses[2:])
            == engaged - BEFORE_PRESS_NS)
    assert replay_start(enabled, [], presses) == enabled


def test_the_pedal_is_released_at_the_start_before_the_engaging_press_or_a_first_press():
    enabled = START_NS + 2 * S
    press, release = (START_NS + 3 * S, True), (START_NS + 4 * S, False)
    # Started before ENABLED, just before the press that engaged the console.
    assert released_at_start(enabled - S, enabled, [press])
    # Started at ENABLED with no pedal state recorded before it (the recorder joined the
    # surgeon's pedal after its first state): released until the first press.
    assert released_at_start(enabled, enabled, [press, release])
    # A state recorded before the start is the one in force (the player hands it over).
    assert not released_at_start(enabled, enabled, [(START_NS + S, False), press])
    # The first recorded after the start is a release: the pedal was held; nothing known.
    assert not released_at_start(enabled, enabled, [release])
    assert not released_at_start(enabled, enabled, [])


def test_procedure_end_is_the_final_disable_after_the_last_enable():
    assert procedure_end([(1, "DISABLED"), (2, "ENABLED"), (3, "ENABLED"), (4, "DISABLED"),
                          (5, "DISABLED")]) == 4
    assert procedure_end([(2, "ENABLED"), (3, "PAUSED"), (4, "DISABLED")]) == 4
    # Still enabled (or paused) at the end of the recording, or never enabled: no end.
    assert procedure_end([(2, "ENABLED"), (3, "DISABLED"), (4, "ENABLED")]) is None
    assert procedure_end([(2, "ENABLED"), (3, "PAUSED")]) is None
    assert procedure_end([(1, "DISABLED")]) is None


def test_replay_deviation_ends_where_the_recorded_procedure_ended():
    """The recording's operator disabled the arm at 8 s; the replay's console follows to its
    own end: no difference, and only up to the recorded end is compared."""
    stamps = START_NS + np.arange(0, 10_000, 10, dtype=np.int64) * MS
    path = reference_path(stamps)
    engage, disabled = START_NS + 1 * S, START_NS + 8 * S
    commands = np.arange(engage, disabled, 4 * MS)
    following = [(engage, True), (disabled, False)]
    later = 3 * S
    replay = recorded_session(stamps + later, path, [(engage + later, True)],
                              np.arange(engage, stamps[-1], 4 * MS) + later)
    open_ended = ReplayReference(START_NS, engage, following, commands, Track(stamps, path))
    assert open_ended.deviation(replay, START_NS + later)["replay_differences"] == 1
    ended = ReplayReference(START_NS, engage, following, commands, Track(stamps, path),
                            end_ns=disabled)
    figures = ended.deviation(replay, START_NS + later)
    assert figures["replay_differences"] == 0 and figures["replay_in_step_to_end"]
    assert figures["replay_compared_s"] == pytest.approx(7.0, abs=0.02)
    assert figures["replay_deviation_mm"]["max"] < 1e-6


def test_replayed_presence_presses_again_only_where_the_recording_went_on_following():
    presence = ReplayedPresence(patience_s=0.3, release_s=0.2)

    def pedal(t, recorded_following, following, recorded_pedal=True, clutch=False):
        return presence.pedal(t, recorded_pedal, clutch, recorded_following, following)

    # Not following where the recording did not follow either (a pause in both): as recorded,
    # for as long as it lasts.
    assert all(pedal(t, False, False) for t in (0.0, 0.5, 1.0, 2.0))
    assert not pedal(2.1, False, False, recorded_pedal=False)
    # Clutched: as recorded.
    assert all(pedal(t, True, False, clutch=True) for t in (3.0, 4.0, 4.9))
    # This session stopped following while the recording went on: after 0.3 s the pedal is
    # lifted for 0.2 s, then pressed again (the console re-engages only on a fresh press).
    assert pedal(5.0, True, False) and pedal(5.19, True, False)
    assert not pedal(5.21, True, False) and not pedal(5.4, True, False)
    assert pedal(5.42, True, False) and presence.presses == 1
    # Following again: nothing more to do.
    assert pedal(6.0, True, True) and pedal(9.0, True, True) and presence.presses == 1


def test_the_replayed_surgeon_never_presses_a_pedal_held_at_the_start_and_presses_again():
    now = [0.0]
    published, said = [], []
    surgeon = ReplaySurgeon([(5 * S, True)], lambda topic, down: published.append((topic, down)),
                            said.append, clock=lambda: now[0])
    # Before the recording says how the pedals stand, nothing: a released pedal published
    # first and the held one after would be a fresh press, and engage at the wrong moment.
    surgeon.work_pedal(0)
    assert published == []
    surgeon.take(CLUTCH_TOPIC, False, 0)
    surgeon.take(PRESENCE_TOPIC, True, 0)
    assert published == [(CLUTCH_TOPIC, False), (PRESENCE_TOPIC, True)]
    # The recorded surgeon engages at 5 s; this console follows, then stops at 6 s (a stall of
    # its own) while the recording goes on: after 0.3 s the pedal is lifted, then pressed.
    surgeon.set_following(True)
    for t in np.arange(5.0, 6.0, 0.01):
        now[0] = t
        surgeon.work_pedal(int(t * S))
    surgeon.set_following(False)
    for t in np.arange(6.0, 6.6, 0.01):
        now[0] = t
        surgeon.work_pedal(int(t * S))
    assert published[2:] == [(PRESENCE_TOPIC, False), (PRESENCE_TOPIC, True)]
    assert len(said) == 1 and "pressed operator-present again" in said[0]
    # A recorded release goes out at once.
    surgeon.take(PRESENCE_TOPIC, False, int(6.6 * S))
    assert published[-1] == (PRESENCE_TOPIC, False)


def test_a_replay_started_before_the_engaging_press_releases_the_pedal_until_it():
    published = []
    surgeon = ReplaySurgeon([(S, True)], lambda topic, down: published.append((topic, down)),
                            clock=lambda: 0.0, released_at_start=True)
    # Released from the start (the patient site hears the pedal), then the recorded press: a
    # fresh press, which engages as the recording did.
    surgeon.work_pedal(0)
    assert published == [(PRESENCE_TOPIC, False)]
    surgeon.take(PRESENCE_TOPIC, True, S - MS)
    assert published == [(PRESENCE_TOPIC, False), (PRESENCE_TOPIC, True)]


def test_following_at_reads_the_state_in_force():
    changes = [(10, True), (20, False), (30, True)]
    assert [following_at(changes, t) for t in (5, 10, 15, 20, 29, 30, 99)] == \
        [False, True, True, False, False, True, True]


# -- the command, on bags as `ros2 bag record` writes them ---------------------------------


def pose(i: int) -> PoseStamped:
    message = PoseStamped()
    message.header.frame_id = str(i)
    message.header.stamp.sec = i
    message.pose.position.x, message.pose.orientation.w = i * 1e-3, 1.0
    return message


#: A surgeon's device at 50 Hz for 1.5 s with a 0.4 s pause (0.6 to 1.0 s), the clutch and the
#: arm's state (transient local) and one state command (volatile).
POSE_OFFSETS_MS = [t for t in range(0, 1501, 20) if not 600 < t < 1000]
RECORDING = sorted(
    [("/mtm/measured_cp", t * MS, pose(k)) for k, t in enumerate(POSE_OFFSETS_MS)]
    + [("/console/clutch", t * MS, Bool(data=value))
       for t, value in ((50, False), (500, True), (1100, False), (1450, True))]
    + [("/psm/operating_state", t * MS, OperatingState(state=value, is_homed=True))
       for t, value in ((10, "DISABLED"), (300, "ENABLED"))]
    + [("/psm/state_command", 250 * MS, StringStamped(string="enable"))],
    key=lambda m: m[1])
TYPES = {"/mtm/measured_cp": "geometry_msgs/msg/PoseStamped",
         "/console/clutch": "std_msgs/msg/Bool",
         "/psm/operating_state": "crtk_msgs/msg/OperatingState",
         "/psm/state_command": "crtk_msgs/msg/StringStamped"}
OFFERED = {"/mtm/measured_cp": (QosReliability.BEST_EFFORT, QosDurability.VOLATILE),
           "/console/clutch": (QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL),
           "/psm/operating_state": (QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL),
           "/psm/state_command": (QosReliability.RELIABLE, QosDurability.VOLATILE)}
MESSAGE_TYPES = {"/mtm/measured_cp": PoseStamped, "/console/clutch": Bool,
                 "/psm/operating_state": OperatingState, "/psm/state_command": StringStamped}


def ros2_bag(parent: Path, storage: str, messages=RECORDING, types=TYPES,
             offered=OFFERED) -> Path:
    """A bag laid out as `ros2 bag record` (Kilted) writes it: rosbag2_<date>/ with
    rosbag2_<date>_0.mcap (or .db3) and a version 9 metadata.yaml naming it, QoS as discovery
    gives it (history unknown, depth 0)."""
    bag = parent / "rosbag2_2026_11_27-10_00_00"
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    with Writer(bag, version=9, storage_plugin=plugin) as writer:
        connections = {topic: writer.add_connection(
            topic, types[topic], typestore=TYPESTORE,
            offered_qos_profiles=[discovered_qos(*offered[topic])]) for topic in types}
        for topic, offset, message in messages:
            writer.write(connections[topic], START_NS + offset, serialize_message(message))
    suffix = ".mcap" if storage == "mcap" else ".db3"
    (bag / f"{bag.name}{suffix}").rename(bag / f"{bag.name}_0{suffix}")
    metadata = yaml.safe_load((bag / "metadata.yaml").read_text())
    info = metadata["rosbag2_bagfile_information"]
    info["relative_file_paths"] = [f"{bag.name}_0{suffix}"]
    info["files"][0]["path"] = f"{bag.name}_0{suffix}"
    info["ros_distro"] = "kilted"
    (bag / "metadata.yaml").write_text(yaml.safe_dump(metadata, sort_keys=False))
    return bag


def test_the_ros2_layout_bag_is_as_rosbag2_writes_it(tmp_path):
    bag = ros2_bag(tmp_path, "mcap")
    assert sorted(p.name for p in bag.iterdir()) == [
        "metadata.yaml", "rosbag2_2026_11_27-10_00_00_0.mcap"]
    info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["version"] == 9 and info["relative_file_paths"] == [
        "rosbag2_2026_11_27-10_00_00_0.mcap"]
    (clutch,) = [t["topic_metadata"] for t in info["topics_with_message_count"]
                 if t["topic_metadata"]["name"] == "/console/clutch"]
    (qos,) = clutch["offered_qos_profiles"]
    assert (qos["history"], qos["depth"], qos["reliability"], qos["durability"]) == (
        "unknown", 0, "reliable", "transient_local")


class Listener:
    """This test process subscribed to the played topics with QoS matching the recording's,
    taking each message's bytes and the time it came."""

    def __init__(self, domain: int):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node("replay_listener", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received: list[tuple[float, str, bytes]] = []

    def subscribe(self, topics: dict[str, tuple]) -> None:
        for topic, (reliability, durability) in topics.items():
            qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy(reliability.value),
                             durability=DurabilityPolicy(durability.value))
            self.node.create_subscription(MESSAGE_TYPES[topic], topic,
                                          lambda data, t=topic: self._on(t, data), qos,
                                          raw=True)

    def _on(self, topic: str, data: bytes) -> None:
        self.received.append((time.monotonic(), topic, data))

    def wait_for_publishers(self, topics, process: subprocess.Popen) -> None:
        deadline = time.monotonic() + DISCOVERY_TIMEOUT_S
        while not all(self.node.count_publishers(topic) for topic in topics):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the player's publishers were not discovered"
            time.sleep(0.02)

    def spin_while(self, process: subprocess.Popen, timeout_s: float) -> None:
        """Take messages until the process has ended and a moment after."""
        deadline = time.monotonic() + timeout_s
        while process.poll() is None:
            assert time.monotonic() < deadline, "the replay did not end"
            self.executor.spin_once(timeout_sec=0.005)
        drain = time.monotonic() + 0.3
        while time.monotonic() < drain:
            self.executor.spin_once(timeout_sec=0.005)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def replay(bag: Path, env: dict, *options: str, played=tuple(OFFERED)):
    """Run `telesurg replay BAG --wait-subscribers 10 OPTIONS` and listen to every topic of
    the recording; returns the player's output and the messages [(time, topic, data)].

    The player waits for a subscriber on each topic it plays. Subscribing only once its
    publishers are known here makes this side of discovery finish first: a subscriber drops
    what comes from a publisher it does not know yet."""
    listener = Listener(int(env["ROS_DOMAIN_ID"]))
    process = subprocess.Popen([sys.executable, "-m", "telesurg.cli", "replay", str(bag),
                                "--wait-subscribers", "10", *options], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        listener.wait_for_publishers(played, process)
        for topic in set(OFFERED) - set(played):
            assert listener.node.count_publishers(topic) == 0, topic
        listener.subscribe(OFFERED)
        listener.spin_while(process, CLI_TIMEOUT_S)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        listener.close()
    assert process.returncode == 0, err
    assert "Traceback" not in err
    return out, listener.received


def by_topic(received) -> dict[str, list]:
    """The messages received, decoded, by topic in arrival order (the bytes may differ from
    the recorded ones in their padding)."""
    found: dict[str, list] = {}
    for _, topic, data in received:
        found.setdefault(topic, []).append(deserialize_message(data, MESSAGE_TYPES[topic]))
    return found


def recorded(topics=None, start_ms: int = 0) -> dict[str, list]:
    """The recording's messages by topic, from start_ms on."""
    found: dict[str, list] = {}
    for topic, offset, message in RECORDING:
        if (topics is None or topic in topics) and offset >= start_ms * MS:
            found.setdefault(topic, []).append(message)
    return found


def pose_times(received) -> list[tuple[float, int]]:
    """(arrival time, pose index) of the device's poses received."""
    return [(t, int(deserialize_message(data, PoseStamped).header.frame_id))
            for t, topic, data in received if topic == "/mtm/measured_cp"]


@pytest.mark.multiprocess
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_replay_plays_every_message_in_order_with_the_recorded_timing(tmp_path, ros_env,
                                                                      storage):
    bag = ros2_bag(tmp_path, storage)
    out, received = replay(bag, ros_env)
    assert f"replaying 4 topics of {bag}" in out
    assert f"published {len(RECORDING)} messages" in out
    assert by_topic(received) == recorded()  # every message, each topic's in order, values
    poses = pose_times(received)
    # The recorded timing: 1.5 s from the first pose to the last, the 0.4 s pause kept.
    span = poses[-1][0] - poses[0][0]
    assert 0.7 * 1.5 <= span <= 1.3 * 1.5, span
    last_before_pause = POSE_OFFSETS_MS.index(600)
    pause = poses[last_before_pause + 1][0] - poses[last_before_pause][0]
    assert 0.3 <= pause <= 0.6, pause
    # Every message close to its recorded offset from the first one (a stall of this machine
    # delays some, never advances them).
    first = received[0][0]
    offsets = [offset * 1e-9 for _, offset, _ in RECORDING]
    arrivals = sorted(t - first for t, _, _ in received)
    assert all(-0.1 <= a - o <= 0.4 for a, o in zip(arrivals, offsets, strict=True))


@pytest.mark.multiprocess
def test_replay_of_some_topics_plays_only_those(tmp_path, ros_env):
    bag = ros2_bag(tmp_path, "mcap")
    played = ("/console/clutch", "/mtm/measured_cp")
    out, received = replay(bag, ros_env, "--topics", *played, played=played)
    assert "replaying 2 topics" in out
    found = by_topic(received)
    assert found == recorded(played)  # and nothing on the other topics
    assert f"published {sum(len(d) for d in found.values())} messages" in out


@pytest.mark.multiprocess
def test_replay_from_a_start_time_first_gives_the_states_then_in_force(tmp_path, ros_env):
    bag = ros2_bag(tmp_path, "mcap")
    out, received = replay(bag, ros_env, "--start", "0.8")
    found = by_topic(received)
    # States: the last value before 0.8 s first, then what followed.
    assert [m.data for m in found["/console/clutch"]] == [True, False, True]
    assert [m.state for m in found["/psm/operating_state"]] == ["ENABLED"]
    assert "/psm/state_command" not in found  # an event before the start is not replayed
    indices = [int(m.header.frame_id) for m in found["/mtm/measured_cp"]]
    assert indices == [k for k, t in enumerate(POSE_OFFSETS_MS) if t >= 800]
    # The first pose after the start (at 1.0 s) came about 0.2 s after the states.
    poses = pose_times(received)
    first_state = min(t for t, topic, _ in received if topic != "/mtm/measured_cp")
    assert 0.1 <= poses[0][0] - first_state <= 0.5, poses[0][0] - first_state
    after_start = sum(len(m) for m in recorded(start_ms=800).values())
    assert f"published {2 + after_start} messages" in out  # the 2 states in force first


@pytest.mark.multiprocess
def test_replay_at_twice_the_rate_takes_half_the_time(tmp_path, ros_env):
    bag = ros2_bag(tmp_path, "mcap")
    _, received = replay(bag, ros_env, "--rate", "2")
    poses = pose_times(received)
    assert [k for _, k in poses] == list(range(len(POSE_OFFSETS_MS)))
    span = poses[-1][0] - poses[0][0]
    assert 0.7 * 0.75 <= span <= 1.3 * 0.75, span


# -- bags it cannot play --------------------------------------------------------------------


def run_cli(*args: str, env: dict, timeout_s: float = CLI_TIMEOUT_S):
    return subprocess.run([sys.executable, "-m", "telesurg.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout_s)


def assert_refused_in_one_line(result, *naming: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for name in naming:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.mark.multiprocess
def test_replay_of_a_topic_not_in_the_bag_is_refused_naming_it(tmp_path, ros_env):
    bag = ros2_bag(tmp_path, "mcap")
    result = run_cli("replay", str(bag), "--topics", "/console/clutch", "/psm/nope",
                     env=ros_env)
    line = assert_refused_in_one_line(result, str(bag), "/psm/nope")
    assert "/console/clutch," not in line.split("(it has")[0]  # only the missing one named


@pytest.mark.multiprocess
@pytest.mark.parametrize("case", ["missing", "garbage_mcap", "garbage_db3", "cut_db3",
                                  "cut_mcap_header", "garbage_metadata", "empty_dir"])
def test_replay_of_a_bag_it_cannot_read_is_refused_naming_the_file(tmp_path, ros_env, case):
    if case == "missing":
        path = tmp_path / "no_such_bag"
    elif case == "garbage_mcap":
        path = tmp_path / "x.mcap"
        path.write_bytes(b"\x89MCAP0\r\n" + bytes(range(256)) * 4)
    elif case == "garbage_db3":
        path = tmp_path / "x.db3"
        path.write_bytes(bytes(range(256)) * 8)
    elif case == "cut_db3":
        path = ros2_bag(tmp_path, "sqlite3")
        storage_file = path / f"{path.name}_0.db3"
        storage_file.write_bytes(storage_file.read_bytes()[:3000])
    elif case == "cut_mcap_header":
        path = ros2_bag(tmp_path, "mcap")
        storage_file = path / f"{path.name}_0.mcap"
        storage_file.write_bytes(storage_file.read_bytes()[:20])
    elif case == "garbage_metadata":
        path = ros2_bag(tmp_path, "mcap")
        (path / "metadata.yaml").write_text("rosbag2_bagfile_information:\n  version: [\n")
    else:
        path = tmp_path / "empty"
        path.mkdir()
    result = run_cli("replay", str(path), env=ros_env)
    assert_refused_in_one_line(result, str(path))
    assert result.stdout == ""


@pytest.mark.multiprocess
def test_demo_replay_without_a_usable_master_bag_is_refused_before_any_node_starts(tmp_path,
                                                                                  ros_env):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    out = tmp_path / "out"
    started = time.monotonic()
    result = run_cli("demo", "--replay", str(run_dir), "--out", str(out), env=ros_env,
                     timeout_s=30)
    assert_refused_in_one_line(result, str(run_dir / "master_bag"))
    # Bags without the topics a replay needs: every missing one is named.
    for site in ("master_bag", "patient_bag"):
        write_bag(run_dir / site, [("/foo", 0, String(data="foo"))], {"/foo": EVENT})
    result = run_cli("demo", "--replay", str(run_dir), "--out", str(out), env=ros_env,
                     timeout_s=30)
    line = assert_refused_in_one_line(result, str(run_dir / "master_bag"))
    for topic in ("/mtm/measured_cp", "/console/clutch", "/psm/operating_state",
                  "/console/following"):
        assert f"{topic} missing" in line
    assert not (out / "logs").exists()  # no node was started
    assert time.monotonic() - started < 40


def test_the_storage_file_alone_reads_as_the_bag(tmp_path):
    """The storage file alone (as copied out of a bag) is a bag too."""
    bag = ros2_bag(tmp_path, "mcap")
    alone = tmp_path / "alone.mcap"
    shutil.copy(bag / f"{bag.name}_0.mcap", alone)
    with BagReader(alone) as reader:
        assert check_topics(reader, None) == list(TYPES)
        assert [(t, deserialize_message(d, MESSAGE_TYPES[t])) for t, _, d in
                reader.messages()] == [(topic, m) for topic, _, m in RECORDING]
        assert reader.topics["/console/clutch"].qos == (discovered_qos(*OFFERED[
            "/console/clutch"]),)
