"""The console page's pure logic and its web server, in process: the hands (the page's controls
turned into master samples), what the page shows (view), and the server (frame queueing per
page, the token and origin checks, JSON and video over the websocket on loopback)."""

import asyncio
import json
import math
import socket
import threading
import time

import aiohttp
import numpy as np
import pytest

from telesurg.bench.console import free_tcp_port
from telesurg.console.hands import (
    GRIPPER_MAX_RAD,
    INPUT_TIMEOUT_S,
    HandInput,
    HandInputError,
    Hands,
    direction_of,
)
from telesurg.console.server import (
    FRAME_HEADER,
    QUEUE_FRAMES,
    ConsoleServer,
    ConsoleServerError,
    Page,
)
from telesurg.console.view import (
    ANSWER_TIMEOUT_S,
    ASSUMED_PAUSE_CAUSE,
    HISTORY_S,
    LATENCY_SAMPLES,
    MOTION_THRESHOLD_M,
    MOTION_WAIT_S,
    CommandDesk,
    ConsoleView,
    MotionWatch,
    latency_figures,
)
from telesurg.session.operator_cli import OPERATING_STATE_TOPIC, format_answer

NAN = float("nan")
SPEED = 0.05  # m/s
GRIP_SPEED = 0.8  # rad/s

# -- hands: the page's controls ------------------------------------------------------------


def test_parse_accepts_a_valid_object():
    """Every field is read, numbers as floats (JSON integers too), flags as given."""
    controls = HandInput.parse({"move": [0.5, -1, 0], "grip": -0.25, "clutch": True,
                                "present": True})
    assert controls == HandInput((0.5, -1.0, 0.0), -0.25, clutch=True, present=True)
    assert all(isinstance(value, float) for value in controls.move)


def test_parse_of_an_empty_object_is_no_control_held():
    """Missing fields are the controls at rest: no move, no grip, pedals up."""
    assert HandInput.parse({}) == HandInput((0.0, 0.0, 0.0), 0.0, clutch=False, present=False)


@pytest.mark.parametrize("fields, field", [
    ({"move": [1, 0]}, "move"),
    ({"move": [0, 0, 0, 0]}, "move"),
    ({"move": "up"}, "move"),
    ({"move": None}, "move"),
    ({"move": [0, 1.01, 0]}, "move[1]"),
    ({"move": [-1.5, 0, 0]}, "move[0]"),
    ({"move": [0, 0, NAN]}, "move[2]"),
    ({"move": [0, 0, float("inf")]}, "move[2]"),
    ({"move": [True, 0, 0]}, "move[0]"),
    ({"move": [0, "1", 0]}, "move[1]"),
    ({"grip": 1.5}, "grip"),
    ({"grip": -1.01}, "grip"),
    ({"grip": NAN}, "grip"),
    ({"grip": False}, "grip"),
    ({"grip": "0.5"}, "grip"),
    ({"clutch": 1}, "clutch"),
    ({"clutch": None}, "clutch"),
    ({"present": "yes"}, "present"),
    ({"present": 0}, "present"),
])
def test_parse_refuses_a_bad_field_naming_it(fields, field):
    """A bad field raises HandInputError (a ValueError) whose message starts with its name."""
    with pytest.raises(HandInputError) as raised:
        HandInput.parse(fields)
    assert isinstance(raised.value, ValueError)
    assert str(raised.value).startswith(f"{field}:")


# -- hands: the master samples -------------------------------------------------------------


def hold(hands: Hands, controls: HandInput, start: float, duration: float,
         step_s: float = 0.05, refresh_s: float = 0.2):
    """Holds controls from start for duration as the page does (sending them every
    refresh_s), stepping the device every step_s; the last sample."""
    steps = round(duration / step_s)
    sample = None
    sent_at = -math.inf
    for i in range(steps + 1):
        now = start + i * step_s
        if now - sent_at >= refresh_s - 1e-9:
            hands.on_input(controls, now)
            sent_at = now
        sample = hands.step(now)
    return sample


def test_holding_a_move_moves_at_speed_along_it():
    """Holding move (1, 0, 0) for T seconds moves the hand speed * T along x, nothing else."""
    hands = Hands(SPEED, 0.5, GRIP_SPEED, now=0.0)
    duration = 2.0
    sample = hold(hands, HandInput((1.0, 0.0, 0.0), present=True), 0.0, duration)
    assert sample.position == pytest.approx([SPEED * duration, 0.0, 0.0], abs=1e-12)
    assert sample.operator_present is True and sample.clutch is False


def test_a_partial_move_moves_at_that_fraction_of_speed():
    """move (-0.5, 0, 0.25) moves at those fractions of the speed on each axis."""
    hands = Hands(SPEED, 0.5, GRIP_SPEED, now=0.0)
    duration = 1.0
    sample = hold(hands, HandInput((-0.5, 0.0, 0.25), present=True), 0.0, duration)
    assert sample.position == pytest.approx(
        [-0.5 * SPEED * duration, 0.0, 0.25 * SPEED * duration], abs=1e-12)


def test_a_diagonal_is_no_faster_than_speed():
    """move (1, 1, 0) covers speed * T in all (norm-limited), split evenly on x and y."""
    hands = Hands(SPEED, 0.5, GRIP_SPEED, now=0.0)
    duration = 1.0
    sample = hold(hands, HandInput((1.0, 1.0, 0.0), present=True), 0.0, duration)
    assert np.linalg.norm(sample.position) == pytest.approx(SPEED * duration, abs=1e-12)
    each = SPEED * duration / math.sqrt(2.0)
    assert sample.position == pytest.approx([each, each, 0.0], abs=1e-12)


def test_the_hand_stays_in_its_workspace():
    """Held long past the box's edge, the hand stops at +-workspace_half_m on each axis."""
    half = 0.02
    hands = Hands(SPEED, half, GRIP_SPEED, now=0.0)
    duration = 3 * half / SPEED  # far enough to leave the box three times over
    sample = hold(hands, HandInput((1.0, -1.0, 0.0), present=True), 0.0, duration)
    assert sample.position == pytest.approx([half, -half, 0.0])
    assert np.all(np.abs(sample.position) <= half)


def test_the_gripper_opens_at_its_speed_within_its_range():
    """grip opens at grip_speed * grip from half open, and never beyond [0, GRIPPER_MAX_RAD]."""
    hands = Hands(SPEED, 0.5, GRIP_SPEED, now=0.0)
    start = hands.gripper
    assert start == pytest.approx(GRIPPER_MAX_RAD / 2)
    sample = hold(hands, HandInput(grip=0.5, present=True), 0.0, 0.5)
    assert sample.gripper == pytest.approx(start + GRIP_SPEED * 0.5 * 0.5)
    sample = hold(hands, HandInput(grip=1.0, present=True), 0.5,
                  3 * GRIPPER_MAX_RAD / GRIP_SPEED)
    assert sample.gripper == pytest.approx(GRIPPER_MAX_RAD)
    sample = hold(hands, HandInput(grip=-1.0, present=True), 10.0,
                  3 * GRIPPER_MAX_RAD / GRIP_SPEED)
    assert sample.gripper == pytest.approx(0.0)


def test_page_gone_before_any_input():
    """No page has sent controls: page_gone, and the samples neither move nor have the
    operator present."""
    hands = Hands(SPEED, 0.5, GRIP_SPEED, now=0.0)
    assert hands.page_gone(0.0)
    sample = hands.step(0.3)
    assert sample.position == pytest.approx([0.0, 0.0, 0.0])
    assert sample.operator_present is False and sample.clutch is False
    hands.on_input(HandInput(present=True), 0.3)
    assert not hands.page_gone(0.3)
    assert not hands.page_gone(0.3 + INPUT_TIMEOUT_S)
    assert hands.page_gone(0.3 + INPUT_TIMEOUT_S + 0.01)


def test_a_silent_page_releases_the_pedal_and_stops_the_hand():
    """A page silent for more than INPUT_TIMEOUT_S: no operator present, no clutch, no motion,
    no gripper change, though its last controls had present, clutch, a move and a grip."""
    hands = Hands(SPEED, 0.5, GRIP_SPEED, now=0.0)
    controls = HandInput((1.0, 0.0, 0.0), grip=1.0, clutch=True, present=True)
    hands.on_input(controls, 0.0)
    alive = hands.step(0.3)
    assert alive.operator_present is True and alive.clutch is True
    assert alive.position[0] == pytest.approx(SPEED * 0.3)
    gone_at = INPUT_TIMEOUT_S + 0.01
    for now in (gone_at, gone_at + 0.05, gone_at + 1.0):
        sample = hands.step(now)
        assert sample.operator_present is False and sample.clutch is False
        assert sample.position == pytest.approx(alive.position)
        assert sample.gripper == pytest.approx(alive.gripper)


def test_direction_of_a_move_is_its_unit_vector():
    """direction_of gives the unit vector along the move, None for no move (or a non-finite
    one)."""
    direction = direction_of((3.0, 0.0, -4.0))
    assert direction == pytest.approx([0.6, 0.0, -0.8])
    assert np.linalg.norm(direction) == pytest.approx(1.0)
    assert direction_of((0.0, 0.0, 0.0)) is None
    assert direction_of((NAN, 0.0, 0.0)) is None
    assert direction_of((float("inf"), 0.0, 0.0)) is None


# -- view: motion for a key press ----------------------------------------------------------


def test_motion_watch_reports_the_press_once_past_the_threshold():
    """The press is reported once the tip went beyond MOTION_THRESHOLD_M along its direction,
    not for less, not for the other way or across it, and only once."""
    watch = MotionWatch()
    start = np.array([0.01, 0.02, 0.03])
    x = np.array([1.0, 0.0, 0.0])
    watch.start(7, x, start, now=0.0)
    assert watch.on_tip(start + 0.5 * MOTION_THRESHOLD_M * x, 0.1) is None
    assert watch.on_tip(start - 10 * MOTION_THRESHOLD_M * x, 0.2) is None
    assert watch.on_tip(start + np.array([0.0, 10 * MOTION_THRESHOLD_M, 0.0]), 0.3) is None
    assert watch.on_tip(start + 1.5 * MOTION_THRESHOLD_M * x, 0.4) == 7
    assert watch.on_tip(start + 3 * MOTION_THRESHOLD_M * x, 0.5) is None


def test_motion_watch_without_a_press_reports_nothing():
    """No press started: no tip reports one."""
    assert MotionWatch().on_tip(np.array([1.0, 1.0, 1.0]), 0.0) is None


def test_motion_watch_forgets_a_press_after_the_wait():
    """A press whose motion comes after MOTION_WAIT_S is not reported, then or later; within
    the wait the same motion is."""
    tip, direction = np.zeros(3), np.array([0.0, 0.0, -1.0])
    moved = tip + 2 * MOTION_THRESHOLD_M * direction
    late = MotionWatch()
    late.start(3, direction, tip, now=10.0)
    assert late.on_tip(moved, 10.0 + MOTION_WAIT_S + 0.01) is None
    assert late.on_tip(moved, 10.0 + MOTION_WAIT_S + 0.02) is None
    in_time = MotionWatch()
    in_time.start(3, direction, tip, now=10.0)
    assert in_time.on_tip(moved, 10.0 + MOTION_WAIT_S - 0.01) == 3


def test_motion_watch_takes_the_first_tip_as_start_when_none_known():
    """Started without a tip, the first tip heard is the start (however far from the origin),
    and motion from it counts."""
    watch = MotionWatch()
    direction = direction_of((1.0, 1.0, 0.0))
    watch.start(4, direction, None, now=0.0)
    first = np.array([0.1, 0.1, 0.1])
    assert watch.on_tip(first, 0.1) is None
    assert watch.on_tip(first + 0.5 * MOTION_THRESHOLD_M * direction, 0.2) is None
    assert watch.on_tip(first + 2 * MOTION_THRESHOLD_M * direction, 0.3) == 4


# -- view: state commands ------------------------------------------------------------------


def status_with(state: str, number: int | None, command: str = "pause", accepted: bool = True,
                reason: str = "ENABLED -> PAUSED") -> dict:
    status = {"state": state}
    if number is not None:
        status["last_command"] = {"number": number, "command": command, "accepted": accepted,
                                  "reason": reason}
    return status


def test_desk_refuses_an_unknown_command():
    """An unknown command is refused with a text naming it, and nothing waits for an answer."""
    desk = CommandDesk()
    desk.on_status(status_with("ENABLED", 2, "enable"))
    reason = desk.send("launch", 0.0)
    assert reason is not None and "launch" in reason
    assert desk.on_status(status_with("ENABLED", 3, "launch")) is None
    assert desk.expired(ANSWER_TIMEOUT_S + 1.0) is None


def test_desk_refuses_a_command_before_any_status():
    """Before any safety status, send refuses (the count to match the answer is unknown)."""
    desk = CommandDesk()
    reason = desk.send("pause", 0.0)
    assert reason is not None and "pause" in reason
    assert desk.on_status(status_with("PAUSED", 1)) is None
    assert desk.expired(ANSWER_TIMEOUT_S + 1.0) is None


def test_desk_answers_with_the_status_that_answers_the_command():
    """Answered by the status whose last_command has a number above the count when sent and
    the same command, as format_answer says it; not by an older number, nor another command;
    only once."""
    desk = CommandDesk()
    assert desk.on_status(status_with("ENABLED", 2, "enable", reason="DISABLED -> ENABLED")) \
        is None
    assert desk.send("pause", 10.0) is None
    assert desk.on_status(status_with("ENABLED", 2, "enable")) is None  # the same, again
    assert desk.on_status(status_with("ENABLED", 1, "pause")) is None  # older
    assert desk.on_status(status_with("ENABLED", 3, "resume")) is None  # another command
    answering = status_with("PAUSED", 3, "pause", reason="ENABLED -> PAUSED")
    answer = desk.on_status(answering)
    assert answer.text == format_answer("pause", answering["last_command"], "PAUSED")
    assert "accepted" in answer.text and "ENABLED -> PAUSED" in answer.text
    assert answer.accepted is True
    assert desk.on_status(answering) is None
    assert desk.expired(10.0 + ANSWER_TIMEOUT_S + 1.0) is None


def test_desk_reports_a_refusal():
    """A refused command's answer says refused, with the supervisor's reason."""
    desk = CommandDesk()
    desk.on_status({"state": "PAUSED"})  # a fresh supervisor: no command counted yet
    assert desk.send("resume", 0.0) is None
    answering = status_with("PAUSED", 1, "resume", accepted=False, reason="link lost")
    answer = desk.on_status(answering)
    assert answer.text == format_answer("resume", answering["last_command"], "PAUSED")
    assert "refused" in answer.text and "link lost" in answer.text
    assert answer.accepted is False  # from the supervisor's answer, whatever its text says


def test_desk_takes_acceptance_from_the_answer_not_its_text():
    """A refusal whose reason reads like an acceptance is still a refusal."""
    desk = CommandDesk()
    desk.on_status({"state": "PAUSED"})
    assert desk.send("resume", 0.0) is None
    answer = desk.on_status(status_with("PAUSED", 1, "resume", accepted=False,
                                        reason="resume: accepted only once a link is back"))
    assert answer.accepted is False


def test_desk_reports_an_unanswered_command_once():
    """No answer within ANSWER_TIMEOUT_S: expired gives a text naming the command, once; a late
    answer is then not reported."""
    desk = CommandDesk()
    desk.on_status(status_with("ENABLED", 5, "enable"))
    sent_at = 20.0
    assert desk.send("pause", sent_at) is None
    assert desk.expired(sent_at + ANSWER_TIMEOUT_S - 0.01) is None
    answer = desk.expired(sent_at + ANSWER_TIMEOUT_S + 0.01)
    assert answer is not None and answer.text.startswith("pause:")
    assert answer.accepted is None
    assert desk.expired(sent_at + ANSWER_TIMEOUT_S + 1.0) is None
    assert desk.on_status(status_with("PAUSED", 6, "pause")) is None


# -- view: the state message ---------------------------------------------------------------


def lost_links() -> dict:
    return {"overall": "LOST", "links": {
        "a": {"state": "DOWN", "rtt_ms": None, "loss_percent": 100.0},
        "b": {"state": "DOWN", "rtt_ms": None, "loss_percent": 100.0}}}


def redundant_links() -> dict:
    return {"overall": "REDUNDANT", "links": {
        "a": {"state": "UP", "rtt_ms": 0.8, "loss_percent": 0.0},
        "b": {"state": "UP", "rtt_ms": 1.1, "loss_percent": 2.0}}}


def view_with(state: str, links: dict, cause: str = "operator command") -> ConsoleView:
    view = ConsoleView()
    view.picture.on_state(1.0, state, True)
    view.picture.on_status(1.0, json.dumps({"state": state, "cause": cause, "persisting": [],
                                            "warnings": []}))
    view.picture.links = links
    return view


@pytest.mark.parametrize("state", ["ENABLED", "PAUSED"])
def test_lost_links_show_an_enabled_arm_as_assumed_paused(state):
    """Both links lost with the arm last heard ENABLED (or PAUSED): shown PAUSED, assumed, with
    the safety contract's cause."""
    arm = view_with(state, lost_links()).state_message(2.0)["arm"]
    assert arm["state"] == "PAUSED"
    assert arm["assumed"] is True
    assert arm["cause"] == ASSUMED_PAUSE_CAUSE


def test_lost_links_assume_from_the_status_state_when_no_operating_state():
    """With no /psm/operating_state heard, the status's ENABLED is what is assumed paused."""
    view = ConsoleView()
    view.picture.on_status(1.0, json.dumps({"state": "ENABLED"}))
    view.picture.links = lost_links()
    arm = view.state_message(2.0)["arm"]
    assert (arm["state"], arm["assumed"]) == ("PAUSED", True)


@pytest.mark.parametrize("state", ["DISABLED", "FAULT"])
def test_lost_links_leave_a_disabled_arm_as_it_is(state):
    """A DISABLED (or FAULT) arm is shown as heard under LOST, not assumed, with its cause."""
    arm = view_with(state, lost_links(), cause="operator disabled").state_message(2.0)["arm"]
    assert arm["state"] == state
    assert arm["assumed"] is False
    assert arm["cause"] == "operator disabled"


def test_redundant_links_show_the_real_state():
    """With links REDUNDANT the arm's heard state and cause are shown, not assumed."""
    view = view_with("ENABLED", redundant_links(), cause="operator enabled")
    message = view.state_message(2.0)
    assert message["type"] == "state"
    assert message["arm"]["state"] == "ENABLED"
    assert message["arm"]["assumed"] is False
    assert message["arm"]["cause"] == "operator enabled"
    assert message["links"] == redundant_links()


def test_state_message_reports_how_long_ago_each_topic_was_heard_and_the_tip():
    """heard_ago_s is now minus when each topic was heard; tip_mm is the tip in millimetres."""
    view = view_with("ENABLED", redundant_links())
    view.picture.on_state(5.0, "ENABLED", True)
    view.tip = [0.001, -0.0025, 0.1]
    message = view.state_message(7.5)
    assert message["heard_ago_s"][OPERATING_STATE_TOPIC] == pytest.approx(7.5 - 5.0)
    assert message["tip_mm"] == pytest.approx([1e3 * v for v in view.tip])


def test_links_history_keeps_the_last_history_s():
    """on_links keeps the reports of the last HISTORY_S; the message's history (on request
    only) gives each with its age, negative, and what it said."""
    view = ConsoleView()
    times = [0.0, 5.0, 12.0, 25.0, 38.0, 40.0]
    for i, t in enumerate(times):
        links = redundant_links() if i % 2 else lost_links()
        view.picture.links = links
        view.on_links(t)
    last = times[-1]
    kept = [(i, t) for i, t in enumerate(times) if last - t <= HISTORY_S]
    assert len(kept) < len(times)  # some were forgotten
    now = last + 1.0
    history = view.state_message(now, with_history=True)["history"]
    assert [entry[0] for entry in history] == pytest.approx([t - now for _, t in kept])
    assert all(entry[0] < 0 for entry in history)
    for entry, (i, _) in zip(history, kept, strict=True):
        report = redundant_links() if i % 2 else lost_links()
        assert entry[1] == report["overall"]
        assert entry[2] == {name: (link["state"], link["rtt_ms"], link["loss_percent"])
                            for name, link in report["links"].items()}
    assert view.state_message(now)["history"] is None


def test_links_history_before_any_link_report():
    """A link report not heard yet is kept as no overall state and no links."""
    view = ConsoleView()
    view.on_links(1.0)
    assert view.state_message(2.0, with_history=True)["history"] == [[-1.0, None, {}]]


def test_page_latency_keeps_only_plausible_numbers():
    """on_page_latency keeps numbers in [0, 60000) ms and ignores bools, negatives, non-numbers,
    NaN, infinities and a field that is not a list."""
    view = ConsoleView()
    good = [10, 20.5, 0, 59_999.9]
    view.on_page_latency({
        "capture_to_display_ms": [good[0], True, -1, good[1], 60_000, "5", None, good[2], NAN,
                                  float("inf"), good[3], [3], False],
        "key_to_motion_ms": "12",
    })
    assert list(view.capture_to_display_ms) == [float(v) for v in good]
    assert list(view.key_to_motion_ms) == []
    view.on_page_latency({"key_to_motion_ms": [7, 9]})
    assert list(view.key_to_motion_ms) == [7.0, 9.0]
    latency = view.state_message(0.0)["latency"]
    p50, p99 = np.percentile(good, [50, 99])
    assert latency["capture_to_display_ms"] == {"p50": round(p50, 1), "p99": round(p99, 1),
                                                "n": len(good)}


def test_page_latency_keeps_the_last_samples():
    """Each latency keeps only its last LATENCY_SAMPLES measurements."""
    view = ConsoleView()
    values = list(range(LATENCY_SAMPLES + 50))
    view.on_page_latency({"key_to_motion_ms": values[:LATENCY_SAMPLES]})
    view.on_page_latency({"key_to_motion_ms": values[LATENCY_SAMPLES:]})
    assert list(view.key_to_motion_ms) == [float(v) for v in values[-LATENCY_SAMPLES:]]


def test_percentiles_of_samples():
    """p50 and p99 as numpy computes them (to 0.1 ms) and the count, of the finite samples."""
    rng = np.random.default_rng(3)
    samples = list(rng.gamma(2.0, 15.0, size=237))
    p50, p99 = np.percentile(samples, [50, 99])
    expected = {"p50": round(float(p50), 1), "p99": round(float(p99), 1), "n": len(samples)}
    assert latency_figures(samples) == expected
    assert latency_figures(samples + [NAN, float("inf")]) == expected
    assert latency_figures([]) is None
    assert latency_figures([NAN]) is None


# -- server: a page's frame queue ----------------------------------------------------------


def queued(page: Page) -> list:
    """Takes what waits in the page's queue, as the writer does."""
    items = []
    while not page.queue.empty():
        kind, payload = page.queue.get_nowait()
        if kind == "frame":
            page.frames_queued -= 1
        items.append((kind, payload))
    return items


def test_a_page_skips_deltas_until_a_keyframe_per_eye():
    """Before an eye's keyframe its deltas are skipped (True, nothing queued); its keyframe and
    the deltas after it are queued; the other eye still waits for its own keyframe."""
    async def scenario():
        page = Page(1, socket=None)
        assert page.offer_frame(0, False, b"L0") is True
        assert page.offer_frame(1, False, b"R0") is True
        assert queued(page) == []
        assert page.offer_frame(0, True, b"Lk") is True
        assert page.offer_frame(0, False, b"L1") is True
        assert page.offer_frame(1, False, b"R1") is True  # eye 1 still without a keyframe
        assert queued(page) == [("frame", b"Lk"), ("frame", b"L1")]
        assert page.offer_frame(1, True, b"Rk") is True
        assert page.offer_frame(1, False, b"R2") is True
        assert queued(page) == [("frame", b"Rk"), ("frame", b"R2")]
    asyncio.run(scenario())


def test_a_full_page_makes_the_eye_wait_for_its_next_keyframe():
    """With QUEUE_FRAMES waiting the next frame is refused (False) and that eye skips its deltas
    until its next keyframe, even once the queue has room; the other eye goes on."""
    async def scenario():
        page = Page(1, socket=None)
        assert page.offer_frame(1, True, b"Rk")
        assert page.offer_frame(0, True, b"Lk")
        for i in range(QUEUE_FRAMES - 2):
            assert page.offer_frame(0, False, b"L%d" % i)
        assert page.offer_frame(0, False, b"lost") is False
        assert len(queued(page)) == QUEUE_FRAMES
        assert page.offer_frame(0, False, b"after") is True  # skipped: eye 0 lost a frame
        assert page.offer_frame(1, False, b"R1") is True  # eye 1 lost nothing
        assert queued(page) == [("frame", b"R1")]
        assert page.offer_frame(0, True, b"Lk2")
        assert page.offer_frame(0, False, b"L9")
        assert queued(page) == [("frame", b"Lk2"), ("frame", b"L9")]
    asyncio.run(scenario())


def test_frame_header_round_trips():
    """FRAME_HEADER packs the eye, the keyframe flag and a float64 ms that unpack unchanged."""
    stamp = 1_712_345_678_901.25
    for eye, keyframe in ((0, 0), (1, 1), (1, 0)):
        header = FRAME_HEADER.pack(eye, keyframe, stamp)
        assert len(header) == FRAME_HEADER.size == 16
        assert FRAME_HEADER.unpack(header) == (eye, keyframe, stamp)


# -- server: over HTTP on loopback ---------------------------------------------------------

TOKEN = "x" * 22
WAIT_S = 5.0


class Served:
    """A ConsoleServer on loopback and what its callbacks heard."""

    def __init__(self):
        self.port = free_tcp_port()
        self.messages: list[tuple[int, dict]] = []
        self.connected: list[int] = []
        self.disconnected: list[int] = []
        self.lock = threading.Lock()
        self.server = ConsoleServer("127.0.0.1", self.port, TOKEN, self.on_message,
                                    self.on_connect, self.on_disconnect)

    def on_message(self, page: int, message: dict) -> None:
        with self.lock:
            self.messages.append((page, message))

    def on_connect(self, page: int) -> dict:
        with self.lock:
            self.connected.append(page)
        return {"type": "hello", "page": page}

    def on_disconnect(self, page: int) -> None:
        with self.lock:
            self.disconnected.append(page)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


async def until(condition) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture
def served():
    served = Served()
    served.server.start()
    yield served
    served.server.stop()


def test_server_needs_the_token_for_the_page(served):
    """GET / without the token or with a wrong one is 403; with it, the page, which loads
    console.js (served without a token)."""
    async def scenario():
        async with aiohttp.ClientSession() as session:
            async with session.get(served.url("/")) as response:
                assert response.status == 403
            async with session.get(served.url("/?token=" + "y" * 22)) as response:
                assert response.status == 403
            async with session.get(served.url("/?token=" + TOKEN[:-1])) as response:
                assert response.status == 403
            async with session.get(served.url("/?token=" + TOKEN)) as response:
                assert response.status == 200
                assert "console.js" in await response.text()
            async with session.get(served.url("/console.js")) as response:
                assert response.status == 200
                assert len(await response.text()) > 0
    asyncio.run(scenario())


def test_a_server_asked_for_port_0_serves_on_a_free_port_its_url_names():
    server = ConsoleServer("127.0.0.1", 0, TOKEN, lambda *_: None, lambda _: {},
                           lambda _: None)
    server.start()
    try:
        assert server.port > 0 and f":{server.port}/?token={TOKEN}" in server.url()

        async def scenario():
            async with aiohttp.ClientSession() as session, session.get(server.url()) as response:
                assert response.status == 200
        asyncio.run(scenario())
    finally:
        server.stop()


def test_a_taken_port_is_refused_naming_the_address():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = ConsoleServer("127.0.0.1", port, TOKEN, lambda *_: None, lambda _: {},
                               lambda _: None)
        with pytest.raises(ConsoleServerError, match=f"cannot serve on 127.0.0.1:{port}"):
            server.start()


def test_server_refuses_a_websocket_without_the_token_or_from_another_origin(served):
    """/ws with a wrong token, or the right one from another origin, is refused (403) and no
    page connects."""
    own = f"http://127.0.0.1:{served.port}"

    async def scenario():
        async with aiohttp.ClientSession() as session:
            for token, origin in (("z" * 22, own), (TOKEN, "http://evil.example"),
                                  (TOKEN, "http://127.0.0.1:1")):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(served.url(f"/ws?token={token}"), origin=origin)
                assert refused.value.status == 403
    asyncio.run(scenario())
    assert served.connected == []


def test_server_websocket_carries_json_both_ways_and_frames(served):
    """A page from the server's own origin with the token: gets on_connect's message first; its
    JSON objects reach on_message with its number, anything else is answered with an error;
    send() and send_frame() reach it (a frame as its header then its bytes); on_disconnect
    when it goes."""
    origin = f"http://127.0.0.1:{served.port}"

    async def scenario():
        assert not served.server.has_pages
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(served.url(f"/ws?token={TOKEN}"), origin=origin)
            first = await ws.receive_json(timeout=WAIT_S)
            assert served.connected == [first["page"]]
            assert served.server.has_pages
            number = first["page"]
            assert first == {"type": "hello", "page": number}

            await ws.send_str(json.dumps({"type": "input", "move": [1, 0, 0]}))
            await until(lambda: served.messages)
            assert served.messages == [(number, {"type": "input", "move": [1, 0, 0]})]

            for bad in ("not json", "[1, 2]", '"text"'):
                await ws.send_str(bad)
                answer = await ws.receive_json(timeout=WAIT_S)
                assert answer["type"] == "error"
            assert len(served.messages) == 1

            served.server.send({"type": "other page"}, page=number + 1)
            served.server.send({"type": "x"})
            assert await ws.receive_json(timeout=WAIT_S) == {"type": "x"}
            served.server.send({"type": "y"}, page=number)
            assert await ws.receive_json(timeout=WAIT_S) == {"type": "y"}

            served.server.send_frame(0, True, 123.5, b"abc")
            message = await ws.receive(timeout=WAIT_S)
            assert message.type == aiohttp.WSMsgType.BINARY
            header, payload = message.data[:FRAME_HEADER.size], message.data[FRAME_HEADER.size:]
            assert FRAME_HEADER.unpack(header) == (0, 1, 123.5)
            assert payload == b"abc"

            await ws.close()
            await until(lambda: served.disconnected)
            assert served.disconnected == [number]
            assert not served.server.has_pages
    asyncio.run(scenario())


def test_server_stop_closes_a_connected_page(served):
    """stop() with a page connected closes its websocket and reports it disconnected."""
    origin = f"http://127.0.0.1:{served.port}"

    async def scenario():
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(served.url(f"/ws?token={TOKEN}"), origin=origin)
            number = (await ws.receive_json(timeout=WAIT_S))["page"]
            await asyncio.get_running_loop().run_in_executor(None, served.server.stop)
            message = await ws.receive(timeout=WAIT_S)
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                    aiohttp.WSMsgType.CLOSING)
            assert served.disconnected == [number]
    asyncio.run(scenario())
