"""`telesurg report`: figures and page from a synthetic run directory (real bags, no DDS)."""

import json
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import yaml
from crtk_msgs.msg import OperatingState
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rclpy.serialization import serialize_message
from std_msgs.msg import Bool, String

from telesurg.analysis.recording import safety_states, transitions
from telesurg.analysis.report import (
    FIGURES,
    flatten,
    link_history,
    link_outages,
    lost_intervals,
    run_report,
    state_runs,
    task_window,
    write_report,
)
from telesurg.bags.storage import IN_PROGRESS, RECORDING_KEY, BagWriter

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MS = 1_000_000
S = 1_000_000_000
T0 = 1_700_000_000 * S  # the recording's first message
DURATION_NS = 4 * S
#: Link a is down from 1.5 s to 2 s (b carries on); both are down from 3 s to 3.2 s.
A_DOWN = [(T0 + 1500 * MS, T0 + 2000 * MS), (T0 + 3000 * MS, T0 + 3200 * MS)]
B_DOWN = [(T0 + 3000 * MS, T0 + 3200 * MS)]
#: (from, state, cause) of /safety/status: enabled at 0.5 s, paused by the lost links.
SAFETY = [(0, "DISABLED", ""), (500 * MS, "ENABLED", "enable command"),
          (3000 * MS, "PAUSED", "link lost"), (3500 * MS, "ENABLED", "resume command")]
TASK_START_NS = T0 + 600 * MS
SUMMARY = {
    "task": "suturing", "duration_s": 3.2,
    "tracking_error_mm": {"p50": 0.1234, "p99": 0.4321, "max": 0.5},
    "links": {"a": {"rtt_ms_p50": 20.0, "down_events": 2}},
    "pause_reaction_ms": {"p50": None},
    "transitions": [
        {"t_s": -0.1, "from": "DISABLED", "to": "ENABLED", "cause": "enable command"},
        {"t_s": 2.4, "from": "ENABLED", "to": "PAUSED", "cause": "link lost"},
    ],
}


def pose(stamp_ns: int, position) -> PoseStamped:
    message = PoseStamped()
    message.header.frame_id = "psm_base"
    message.header.stamp.sec, message.header.stamp.nanosec = divmod(stamp_ns, S)
    message.pose.position.x, message.pose.position.y, message.pose.position.z = map(
        float, position)
    message.pose.orientation.w = 1.0
    return message


def down(intervals, t: int) -> bool:
    return any(start <= t < end for start, end in intervals)


def link_report(t: int) -> DiagnosticArray:
    def status(hardware_id, state, values):
        return DiagnosticStatus(hardware_id=hardware_id, message=state, values=[
            KeyValue(key=key, value=str(value)) for key, value in values.items()])

    links = {name: "DOWN" if down(intervals, t) else "UP"
             for name, intervals in (("a", A_DOWN), ("b", B_DOWN))}
    up = sum(state == "UP" for state in links.values())
    message = DiagnosticArray(status=[
        status(name, state, {"rtt_ms": 20.0 + 5 * index, "loss_percent": 0.5 * index,
                             "last_heard_age_ms": 3.0, "down_events": 0})
        for index, (name, state) in enumerate(links.items())]
        + [status("overall", ("LOST", "SINGLE", "REDUNDANT")[up], {"commands_sent": 0})])
    message.header.stamp.sec, message.header.stamp.nanosec = divmod(t, S)
    return message


def safety_state_at(t: int) -> tuple[str, str]:
    return next((state, cause) for start, state, cause in reversed(SAFETY) if t >= T0 + start)


def tip_at(t: int) -> np.ndarray:
    """A 10 mm circle in x-y, once every 2 s, 0.14 m below the base."""
    angle = np.pi * (t - T0) / S
    return np.array([0.01 * np.cos(angle), 0.01 * np.sin(angle), -0.14])


def write_bag(path, messages) -> None:
    """messages: (receive time, topic, type name, message)."""
    bag = BagWriter(path, "mcap")
    for t, topic, type_name, message in sorted(messages, key=lambda m: m[0]):
        if not bag.has_topic(topic):
            bag.add_topic(topic, type_name)
        bag.write(topic, t, serialize_message(message))
    bag.close()


def patient_messages() -> list:
    pose_type = "geometry_msgs/msg/PoseStamped"
    messages = []
    for t in range(T0, T0 + DURATION_NS, 10 * MS):  # the arm at 100 Hz
        # The arm 0.3 mm off the setpoint along x: a tracking error of 0.3 mm throughout.
        messages.append((t + 1 * MS, "/psm/setpoint_cp", pose_type, pose(t, tip_at(t))))
        messages.append((t + 2 * MS, "/psm/measured_cp", pose_type,
                         pose(t, tip_at(t) + [0.0003, 0.0, 0.0])))
    for t in range(T0, T0 + DURATION_NS, 5 * MS):  # commands, 5 ms old, 150 ms while a is down
        if not down(B_DOWN, t):
            age = 150 * MS if down(A_DOWN, t) else 5 * MS
            messages.append((t + age, "/psm/servo_cp", pose_type, pose(t, tip_at(t))))
    for t in range(T0, T0 + DURATION_NS, 100 * MS):  # the states at 10 Hz
        messages.append((t + 1 * MS, "/bridge/link_state", "diagnostic_msgs/msg/DiagnosticArray",
                         link_report(t)))
        state, cause = safety_state_at(t)
        messages.append((t, "/safety/status", "std_msgs/msg/String", String(data=json.dumps(
            {"state": state, "cause": cause, "persisting": [], "warnings": [],
             "last_command": None}))))
        messages.append((t, "/psm/operating_state", "crtk_msgs/msg/OperatingState",
                         OperatingState(state=state, is_homed=True)))
    return messages


def master_messages() -> list:
    return [(T0 + t, "/console/following", "std_msgs/msg/Bool", Bool(data=following))
            for t, following in ((0, False), (700 * MS, True), (3000 * MS, False))] + \
        [(T0 + 50 * MS, "/mtm/measured_cp", "geometry_msgs/msg/PoseStamped",
          pose(T0, (0.0, 0.0, 0.0)))]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    write_bag(run / "patient_bag", patient_messages())
    write_bag(run / "master_bag", master_messages())
    (run / "summary.json").write_text(json.dumps(SUMMARY, indent=2))
    return run


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory):
    """The report of the synthetic run: (out directory, page text)."""
    out = tmp_path_factory.mktemp("report")
    page = write_report(run_dir, out)
    assert page == out / "report.html"
    return out, page.read_text()


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    image = matplotlib.image.imread(path)
    assert image.size and image.shape[0] > 100 and image.shape[1] > 100, path


def test_every_figure_is_a_png_and_on_the_page(report):
    out, page = report
    for spec in FIGURES:
        assert_png(out / "figures" / f"{spec.name}.png")
        assert f"src='figures/{spec.name}.png'" in page
    assert "Not drawn" not in page
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # every figure closed


def test_page_shows_the_summary_sources_and_time(report, run_dir):
    _, page = report
    assert "tracking_error_mm.p99" in page and "0.4321" in page
    assert "links.a.rtt_ms_p50" in page
    assert "<td>link lost</td>" in page  # the transitions as a small table
    assert str(run_dir / "patient_bag") in page and str(run_dir / "master_bag") in page
    assert "2023-11-14 22:13:20 UTC" in page  # T0
    assert "4.0 s recorded (task 3.2 s)" in page


def test_page_lists_the_outages_in_the_data(report):
    _, page = report
    # Link a down at 1.5 s for 500 ms and, with b, at 3 s for 200 ms (all links lost).
    assert "<td>a</td><td>DOWN</td><td>1.500</td><td>500.0</td><td>during the task</td>" in page
    assert "<td>all</td><td>LOST</td><td>3.000</td><td>200.0</td>" in page
    assert "3 intervals a link was not UP" in page and "1 interval every link" in page


def test_outage_intervals_from_link_reports():
    reports = [(t + 1 * MS, link_report(t)) for t in range(T0, T0 + DURATION_NS, 100 * MS)]
    history = link_history(reports)
    end = T0 + DURATION_NS
    outages = link_outages(history, end)
    assert [(i.start_ns, i.end_ns, i.state) for i in outages["a"]] == \
        [(start, stop, "DOWN") for start, stop in A_DOWN]
    assert [(i.start_ns, i.end_ns) for i in outages["b"]] == B_DOWN
    assert [(i.start_ns, i.end_ns) for i in lost_intervals(history, end)] == B_DOWN
    assert history.links["b"].rtt_ms[0] == 25.0 and history.links["b"].loss_pct[0] == 0.5


def test_an_outage_lasting_to_the_end_ends_there():
    runs = state_runs([(0, "UP"), (10, "UP"), (20, "DOWN"), (30, "DOWN")], end_ns=50)
    assert [(r.start_ns, r.end_ns, r.state) for r in runs] == [(0, 20, "UP"), (20, 50, "DOWN")]
    assert state_runs([], 50) == []


def test_transitions_carry_their_causes_and_skip_bad_reports():
    statuses = [(t, String(data=json.dumps({"state": state, "cause": cause})))
                for t, state, cause in SAFETY]
    statuses.insert(2, (1, String(data="not json")))
    changes = transitions(safety_states(statuses))
    assert [(c.time_ns, c.previous, c.current, c.cause) for c in changes] == [
        (500 * MS, "DISABLED", "ENABLED", "enable command"),
        (3000 * MS, "ENABLED", "PAUSED", "link lost"),
        (3500 * MS, "PAUSED", "ENABLED", "resume command")]


def test_task_window_anchored_on_a_recorded_transition():
    statuses = [(T0 + t, String(data=json.dumps({"state": state, "cause": cause})))
                for t, state, cause in SAFETY]
    recorded = transitions(safety_states(statuses))
    assert task_window(SUMMARY, recorded) == (TASK_START_NS, TASK_START_NS + 3200 * MS)
    assert task_window({}, recorded) is None
    assert task_window({"duration_s": 1.0, "transitions": []}, recorded) is None


def test_the_figures_data_reflects_the_recording(report, run_dir):
    # A figure's data comes from the same extraction: checked through it on the real bags.
    from telesurg.analysis.report import extract_session, find_sources, load_recording

    recording = load_recording(find_sources(run_dir).bags)
    session = extract_session(recording, SUMMARY)
    _, errors = session.tracking_error
    np.testing.assert_allclose(errors * 1e3, 0.3, atol=1e-6)
    times, ages = session.command_age
    assert np.isclose(ages.min(), 5.0) and np.isclose(ages.max(), 150.0)
    assert session.following[1] == (T0 + 700 * MS, True)  # the master's copy
    assert session.task == (TASK_START_NS, TASK_START_NS + 3200 * MS)


def test_summary_flattened_to_dotted_keys():
    assert flatten({"a": 1, "b": {"c": 2, "d": {"e": None}}, "f": [1]}) == [
        ("a", 1), ("b.c", 2), ("b.d.e", None), ("f", [1])]


def test_a_single_patient_bag_writes_beside_it(run_dir, tmp_path, capsys):
    bag = tmp_path / "patient_bag"
    shutil.copytree(run_dir / "patient_bag", bag)
    assert run_report(bag, None) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'report.html'} (5 figures)"
    for spec in FIGURES:
        assert_png(tmp_path / "figures" / f"{spec.name}.png")
    page = (tmp_path / "report.html").read_text()
    assert "No summary.json" in page and "patient site: " in page


def test_a_bag_without_some_topics_skips_their_figures(tmp_path, capsys):
    kept = {"/psm/measured_cp", "/bridge/link_state"}
    write_bag(tmp_path / "partial", [m for m in patient_messages() if m[1] in kept])
    assert run_report(tmp_path / "partial" / "partial.mcap", tmp_path / "out") == 0
    assert "(2 figures)" in capsys.readouterr().out
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Not drawn: /psm/setpoint_cp not recorded" in page
    assert "Not drawn: /safety/status or /psm/operating_state not recorded" in page
    assert not (tmp_path / "out" / "figures" / "command_age.png").exists()


def cut_in_half(run_dir: Path, tmp_path: Path) -> Path:
    bag = tmp_path / "patient_bag"
    shutil.copytree(run_dir / "patient_bag", bag)
    mcap = bag / "patient_bag.mcap"
    mcap.write_bytes(mcap.read_bytes()[:mcap.stat().st_size // 2])
    return bag


def test_a_closed_bag_cut_short_is_refused_in_one_line(run_dir, tmp_path, capsys):
    bag = cut_in_half(run_dir, tmp_path)
    assert run_report(bag, tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{bag}: truncated" in error


def test_a_recording_whose_recorder_died_is_read_up_to_its_last_chunk(run_dir, tmp_path,
                                                                      capsys):
    bag = cut_in_half(run_dir, tmp_path)
    # What a recorder's last checkpoint leaves in metadata.yaml (telesurg.bags.storage).
    metadata_path = bag / "metadata.yaml"
    metadata = yaml.safe_load(metadata_path.read_text())
    metadata["rosbag2_bagfile_information"]["custom_data"] = {RECORDING_KEY: IN_PROGRESS}
    metadata_path.write_text(yaml.safe_dump(metadata))
    assert run_report(bag, tmp_path / "out") == 0
    assert "was never closed" in (tmp_path / "out" / "report.html").read_text()
    assert "Traceback" not in capsys.readouterr().err


def spoil_mcap(run):
    mcap = run / "patient_bag" / "patient_bag.mcap"
    mcap.write_bytes(b"garbage" * 100)
    return mcap.parent


def drop_metadata(run):
    (run / "patient_bag" / "metadata.yaml").unlink()
    return run / "patient_bag"


def spoil_summary(run):
    (run / "summary.json").write_text("{\"task\": ")
    return run / "summary.json"


@pytest.mark.parametrize(("spoil", "as_bag"), [
    (spoil_mcap, False), (spoil_mcap, True), (drop_metadata, False), (drop_metadata, True),
    (spoil_summary, False)])
def test_unreadable_sources_are_one_line_errors(run_dir, tmp_path, capsys, spoil, as_bag):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    named = spoil(run)
    assert run_report(run / "patient_bag" if as_bag else run, tmp_path / "out") == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith(f"telesurg report: {named}: ")


@pytest.mark.parametrize("name", ["missing", "empty_dir", "notes.txt"])
def test_neither_run_dir_nor_bag(tmp_path, capsys, name):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    assert run_report(tmp_path / name, None) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"telesurg report: {tmp_path / name}: ")
