"""Multi-process, in a real browser: the console page (telesurg console) in headless Chromium,
driving a two-site session with video as `telesurg demo --console` runs it (the nodes of
plan_sites as processes, the emulated links in the test's hands so that it can cut them).

The page loads with no console errors and shows the video, the arm's state and the links; its
Enable button and keys drive the patient arm (read at the patient site by a probe), the video
changes when the arm moves, its Pause button pauses the arm and shows the cause, and cutting both
links shows LOST and PAUSED within a second. Screenshots are saved in the run's directory
(screenshots/, printed)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from session_harness import SiteProbe, Topic

from telesurg.bench.sessions import pick_domain_pair
from telesurg.contract.fields import tip_position
from telesurg.contract.graph import DEFAULT_LINKS
from telesurg.contract.resources import default_config
from telesurg.contract.topics import PATIENT, PSM_MEASURED_CP
from telesurg.session.demo import (
    DemoOptions,
    console_url,
    open_links,
    plan_sites,
    session_environment,
)
from telesurg.session.processes import CLEAN_STOP_CODES, NodeGroup

pytestmark = pytest.mark.multiprocess

CHROMEDRIVER = "/usr/bin/chromedriver"
STARTUP_TIMEOUT_S = 60.0
HOLD_S = 1.0  # a key held this long moves the master hand_speed_m_s * HOLD_S
ARM_PER_KEY_M = 0.05 * 0.2 * HOLD_S  # web_console hand_speed_m_s x master_console scale

pytest.importorskip("selenium")
if not (shutil.which("chromium") and Path(CHROMEDRIVER).exists()):
    pytest.skip("Debian's chromium and chromium-driver are not installed (make setup installs "
                "them as root)", allow_module_level=True)


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ConsoleSession:
    """Both sites with video and the console page in place of the virtual surgeon, a browser on
    the page, and a probe on the patient site's /psm/measured_cp."""

    def __init__(self, out: Path):
        self.out = out
        self.screenshots = out / "screenshots"
        self.screenshots.mkdir(parents=True, exist_ok=True)
        self.stack = contextlib.ExitStack()
        self.groups: list[NodeGroup] = []
        self.exit_codes: dict[str, int] = {}
        options = DemoOptions(out=out, video=True, console=True, console_port=free_tcp_port())
        bridge_config, self.links = open_links(options, out, self.stack)
        for site in plan_sites(options, default_config(), pick_domain_pair(), bridge_config):
            group = NodeGroup(session_environment(site.domain_id), out / "logs" / site.name)
            self.groups.append(group)
            for planned in site.processes:
                group.start_planned(planned)
            if site.name == PATIENT:
                self.patient = SiteProbe(PATIENT, session_environment(site.domain_id), {
                    PSM_MEASURED_CP.name: Topic(PSM_MEASURED_CP.type_name, "record_reliable")},
                    out / "logs")
        self.url = console_url(out, options.console_port)
        self._wait_for_server(options.console_port)
        self.browser = self._open_browser()

    def _wait_for_server(self, port: int) -> None:
        """Until the web console accepts connections (its process is still starting)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            self.raise_if_dead()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1.0):
                return
            time.sleep(0.1)
        raise AssertionError(f"the console page was not served within {STARTUP_TIMEOUT_S:g} s")

    def _open_browser(self):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        # As root Chromium runs only without its sandbox; /dev/shm may be small in containers.
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--window-size=1300,1000"):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        browser.get(self.url)
        return browser

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.browser.quit()
        for group in self.groups:
            self.exit_codes.update(group.stop())
        self.patient.close()
        self.stack.close()

    # -- the page ------------------------------------------------------------------------------

    def text(self, element_id: str) -> str:
        return self.browser.find_element("id", element_id).text

    def wait_for(self, condition, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.raise_if_dead()
            value = condition()
            if value:
                return value
            time.sleep(0.05)
        self.screenshot(f"timeout-{what.replace(' ', '_')[:40]}")
        raise AssertionError(f"the page did not show {what} within {timeout_s:g} s (arm "
                             f"{self.text('arm-state')!r}, cause {self.text('arm-cause')!r}, "
                             f"links {self.text('links-overall')!r}, answer "
                             f"{self.text('answer')!r}; logs in {self.out / 'logs'})")

    def raise_if_dead(self) -> None:
        for group in self.groups:
            dead = group.first_dead()
            if dead:
                raise AssertionError(f"{dead.spec.name} exited ({dead.process.poll()}):\n"
                                     f"{dead.log_tail()}")

    def click(self, element_id: str) -> None:
        self.browser.find_element("id", element_id).click()

    def hold_key(self, key: str, seconds: float) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.browser).key_down(key).pause(seconds).key_up(key).perform()

    def press_key(self, key: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.browser).send_keys(key).perform()

    def frames_shown(self) -> int:
        return int(self.browser.find_element("id", "video").get_attribute("data-frames"))

    def thumbnail(self) -> np.ndarray:
        """The video as the page shows it, 64x48 grey levels."""
        values = self.browser.execute_script("""
            const small = document.createElement('canvas');
            small.width = 64; small.height = 48;
            const context = small.getContext('2d');
            context.drawImage(document.getElementById('video'), 0, 0, 64, 48);
            const rgba = context.getImageData(0, 0, 64, 48).data;
            const grey = [];
            for (let i = 0; i < rgba.length; i += 4) grey.push(rgba[i] + rgba[i + 1] + rgba[i + 2]);
            return grey;""")
        return np.asarray(values, dtype=float) / 3.0

    def screenshot(self, name: str) -> Path:
        path = self.screenshots / f"{name}.png"
        self.browser.save_screenshot(str(path))
        print(f"screenshot: {path}")
        return path

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
    session = ConsoleSession(tmp_path_factory.mktemp("console"))
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
    rows = console.browser.find_elements("css selector", "#links tbody tr")
    assert [row.text.split()[:2] for row in rows] == [[name, "UP"] for name in DEFAULT_LINKS]
    shown = console.frames_shown()
    console.wait_for(lambda: console.frames_shown() > shown + 10, 5.0, "new video frames")
    assert console.thumbnail().std() > 5.0  # a picture, not a blank canvas
    console.wait_for(lambda: "p50" in console.text("latency-video"), 5.0,
                     "the capture-to-display latency")
    console.screenshot("loaded")


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
          new MutationObserver(() => {
            window.changedAt[id + ':' + element.textContent] = performance.timeOrigin
              + performance.now();
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


def test_the_page_logged_no_errors(console):
    entries = console.browser.get_log("browser")
    severe = [entry for entry in entries if entry["level"] == "SEVERE"]
    assert not severe, severe
