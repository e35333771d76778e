"""Multi-process, in a real browser: the console page (telesurg console) in headless Chromium,
driving a two-site session with video as `telesurg demo --console` runs it (the nodes of
plan_sites as processes, the emulated links in the test's hands so that it can cut them).

The page loads with no console errors and shows the video, the arm's state and the links; its
Enable button and keys drive the patient arm (read at the patient site by a probe), the video
changes when the arm moves, its Pause button pauses the arm and shows the cause, and cutting both
links shows LOST and PAUSED within a second. Screenshots are saved in the run's directory
(screenshots/, printed)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from session_harness import SiteProbe, Topic

from telesurg.bench.console import CHROMEDRIVER, STARTUP_TIMEOUT_S, ConsoleSession
from telesurg.contract.fields import tip_position
from telesurg.contract.graph import DEFAULT_LINKS
from telesurg.contract.topics import PATIENT, PSM_MEASURED_CP
from telesurg.session.demo import session_environment
from telesurg.session.processes import CLEAN_STOP_CODES

pytestmark = pytest.mark.multiprocess

HOLD_S = 1.0  # a key held this long moves the master hand_speed_m_s * HOLD_S
ARM_PER_KEY_M = 0.05 * 0.2 * HOLD_S  # web_console hand_speed_m_s x master_console scale

pytest.importorskip("selenium")
if not (shutil.which("chromium") and Path(CHROMEDRIVER).exists()):
    pytest.skip("Debian's chromium and chromium-driver are not installed (make setup installs "
                "them as root)", allow_module_level=True)


class ProbedConsoleSession(ConsoleSession):
    """The console session, with a probe on the patient site's /psm/measured_cp."""

    def __init__(self, out: Path):
        super().__init__(out)
        self.patient = SiteProbe(PATIENT, session_environment(self.domains[PATIENT]), {
            PSM_MEASURED_CP.name: Topic(PSM_MEASURED_CP.type_name, "record_reliable")},
            out / "logs")

    def close(self) -> None:
        super().close()
        self.patient.close()

    # -- the patient site ----------------------------------------------------------------------

    def patient_tip(self) -> np.ndarray:
        return tip_position(self.patient.latest(PSM_MEASURED_CP.name))

    def settled_tip(self, quiet_s: float = 0.3, timeout_s: float = 5.0) -> np.ndarray:
        """The patient arm's tip once it has stopped moving."""
        deadline = time.monotonic() + timeout_s
        previous = self.patient_tip()
        while time.monotonic() < deadline:
            time.sleep(quiet_s)
            tip = self.patient_tip()
            if np.linalg.norm(tip - previous) < 5e-5:
                return tip
            previous = tip
        raise AssertionError(f"the patient arm did not settle within {timeout_s:g} s")




@pytest.fixture(scope="module")
def console(tmp_path_factory, ros_env_module):
    session = ProbedConsoleSession(tmp_path_factory.mktemp("console"))
    try:
        session.wait_for(lambda: session.frames_shown() > 3 and session.text("arm-state") not in
                         ("", "?") and session.text("links-overall") == "REDUNDANT",
                         STARTUP_TIMEOUT_S, "video, the arm's state and both links up")
        session.patient.wait_for(PSM_MEASURED_CP.name, lambda _: True, STARTUP_TIMEOUT_S,
                                 "the arm's pose at the patient site")
        yield session
    finally:
        session.close()
    unclean = {name: code for name, code in session.exit_codes.items()
               if code not in CLEAN_STOP_CODES}
    assert not unclean, f"nodes did not stop cleanly: {unclean} (logs in {session.out})"


def test_the_page_shows_the_video_the_arm_and_both_links(console):
    assert console.text("arm-state") == "DISABLED"  # nothing enabled it: nobody asked
    assert console.text("links-overall") == "REDUNDANT"
    # Read at once: the page rewrites the table at every state update.
    rows = console.browser.execute_script(
        "return [...document.querySelectorAll('#links tbody tr')].map(row => row.innerText)")
    assert [row.split()[:2] for row in rows] == [[name, "UP"] for name in DEFAULT_LINKS]
    shown = console.frames_shown()
    console.wait_for(lambda: console.frames_shown() > shown + 10, 5.0, "new video frames")
    assert console.thumbnail().std() > 5.0  # a picture, not a blank canvas
    assert console.text("video-stale") == ""  # live: not stopped, not missing
    console.wait_for(lambda: "p50" in console.text("latency-video"), 5.0,
                     "the capture-to-display latency")
    console.screenshot("loaded")


def test_the_view_switches_between_left_eye_side_by_side_and_anaglyph(console):
    from selenium.webdriver.support.ui import Select

    video = console.browser.find_element("id", "video")
    view = Select(console.browser.find_element("id", "view-mode"))
    width = int(video.get_attribute("width"))
    view.select_by_value("side")
    console.wait_for(lambda: int(video.get_attribute("width")) == 2 * width, 5.0,
                     "both eyes side by side")
    console.screenshot("side_by_side")
    view.select_by_value("anaglyph")
    console.wait_for(lambda: int(video.get_attribute("width")) == width, 5.0, "the anaglyph")
    red_cyan = console.browser.execute_script("""
        const canvas = document.getElementById('video');
        const rgba = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let red = 0, green = 0, blue = 0;
        for (let i = 0; i < rgba.length; i += 4) {
          red += rgba[i]; green += rgba[i + 1]; blue += rgba[i + 2];
        }
        return [red, green, blue];""")
    assert min(red_cyan) > 0  # red from the left eye, green and blue from the right
    view.select_by_value("left")
    console.wait_for(lambda: int(video.get_attribute("width")) == width, 5.0, "the left eye")


def test_enable_and_the_keys_move_the_patient_arm_the_way_pressed(console):
    console.click("cmd-enable")
    console.wait_for(lambda: console.text("arm-state") == "ENABLED", 10.0, "ENABLED")
    assert "enable: accepted" in console.text("answer")
    console.press_key("p")  # operator present
    console.wait_for(lambda: console.text("following") == "yes", 10.0, "following")
    for key, axis in (("d", 0), ("w", 1)):  # +x, then +y
        before = console.settled_tip()
        console.hold_key(key, HOLD_S)
        moved = console.settled_tip() - before
        assert moved[axis] > 0.5 * ARM_PER_KEY_M, f"key {key}: the arm moved {moved} m"
        others = np.delete(moved, axis)
        assert np.all(np.abs(others) < 0.3 * moved[axis]), f"key {key}: the arm moved {moved} m"
    assert "p50" in console.text("latency-key")
    console.screenshot("driven")


def test_the_video_changes_when_the_arm_moves(console):
    still = console.thumbnail()
    time.sleep(0.5)
    noise = np.abs(console.thumbnail() - still).mean()
    console.hold_key("a", HOLD_S)  # -x
    console.settled_tip()
    moved = np.abs(console.thumbnail() - still).mean()
    assert moved > 3.0 * noise + 0.5, f"picture change {moved:.2f} moving, {noise:.2f} still"


def test_a_gamepad_and_the_pointer_pad_move_the_arm_too(console):
    # A stick pushed right (+x) for HOLD_S: the page reads pads through navigator.getGamepads.
    before = console.settled_tip()
    console.browser.execute_script("""
        const stick = {connected: true, axes: [1, 0, 0, 0],
                       buttons: Array.from({length: 8}, () => ({value: 0}))};
        navigator.getGamepads = () => [stick];""")
    time.sleep(HOLD_S)
    console.browser.execute_script("navigator.getGamepads = () => [];")
    moved = console.settled_tip() - before
    assert moved[0] > 0.5 * ARM_PER_KEY_M, f"gamepad: the arm moved {moved} m"
    # The pad dragged up (+y) by its radius: full speed, until released.
    from selenium.webdriver.common.action_chains import ActionChains

    pad = console.browser.find_element("id", "pad")
    before = console.settled_tip()
    radius = pad.size["width"] // 2
    ActionChains(console.browser).click_and_hold(pad).move_by_offset(0, -radius).pause(
        HOLD_S).release().perform()
    moved = console.settled_tip() - before
    assert moved[1] > 0.5 * ARM_PER_KEY_M, f"pointer pad: the arm moved {moved} m"
    assert abs(moved[0]) < 0.3 * moved[1], f"pointer pad: the arm moved {moved} m"


def test_the_pause_button_pauses_the_arm_and_shows_why(console):
    console.click("cmd-pause")
    console.wait_for(lambda: console.text("arm-state") == "PAUSED", 5.0, "PAUSED")
    console.wait_for(lambda: "pause" in console.text("arm-cause"), 5.0, "the pause's cause")
    assert "pause: accepted" in console.text("answer")
    console.screenshot("paused")
    console.click("cmd-resume")
    console.wait_for(lambda: console.text("arm-state") == "ENABLED", 5.0, "ENABLED again")


def test_cutting_both_links_shows_lost_and_paused_within_a_second(console):
    console.browser.execute_script("""
        window.changedAt = {};
        for (const id of ['links-overall', 'arm-state']) {
          const element = document.getElementById(id);
          new MutationObserver(() => {  // the first time each text is shown
            const key = id + ':' + element.textContent;
            if (!(key in window.changedAt)) {
              window.changedAt[key] = performance.timeOrigin + performance.now();
            }
          }).observe(element, {childList: true, characterData: true, subtree: true});
        }""")
    cut_ms = time.time() * 1e3
    for link in DEFAULT_LINKS:
        console.links.set_down(link, True)
    try:
        console.wait_for(lambda: console.text("links-overall") == "LOST"
                         and console.text("arm-state") == "PAUSED", 3.0, "LOST and PAUSED")
        console.wait_for(lambda: "NO NEW PICTURE" in console.text("video-stale"), 3.0,
                         "that the video stopped")
        console.screenshot("links_lost")
        changed = console.browser.execute_script("return window.changedAt;")
        lost_ms = changed["links-overall:LOST"] - cut_ms
        paused_ms = changed["arm-state:PAUSED"] - cut_ms
        print(f"both links cut: LOST shown after {lost_ms:.0f} ms, PAUSED after "
              f"{paused_ms:.0f} ms")
        assert 0 < lost_ms < 1000 and 0 < paused_ms < 1000
    finally:
        for link in DEFAULT_LINKS:
            console.links.set_down(link, False)
    # Back: the patient site's own report (the arm paused for the link's loss) replaces the
    # page's assumption.
    console.wait_for(lambda: console.text("links-overall") == "REDUNDANT", 10.0, "links back")
    console.wait_for(lambda: console.text("arm-state") == "PAUSED"
                     and "both links lost" not in console.text("arm-cause")
                     and console.text("arm-cause") != "-", 10.0,
                     "the patient site's own PAUSED")


def test_the_page_says_when_its_state_is_old(console):
    """The web console stopped (SIGSTOP) for 2 s: the page says that what it shows is old, then
    that it is connected again."""
    web_console = next(node for group in console.groups for node in group.nodes
                       if node.spec.name == "web_console")
    os.kill(web_console.process.pid, signal.SIGSTOP)
    try:
        console.wait_for(lambda: "NO STATE FOR" in console.text("connection")
                         and "NO NEW PICTURE" in console.text("video-stale"), 3.0,
                         "that its state and its picture are old")
        console.screenshot("state_old")
    finally:
        os.kill(web_console.process.pid, signal.SIGCONT)
    console.wait_for(lambda: console.text("connection") == "connected", 5.0, "connected again")


def test_the_page_logged_no_errors(console):
    entries = console.browser.get_log("browser")
    severe = [entry for entry in entries if entry["level"] == "SEVERE"]
    assert not severe, severe
