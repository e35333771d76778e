"""console: the console page's latencies to the eye, in headless Chromium on this machine.

A two-site session with video on lan links and the console page in place of the virtual surgeon
(as `telesurg demo --console` runs it), the page open in Debian's headless Chromium: the page's
Enable button, then PRESSES key presses alternating +x and -x, each held HOLD_S. Figures, as the
page measures them: capture to display (the endoscope's capture stamp at the patient site to the
picture drawn on the page: render, encode, both bridges over the emulated links, the web console,
WebCodecs decode, the canvas) and key press to the arm's motion shown on the page (the arm tip,
carried back from the patient site, moved 0.1 mm the way pressed); and the CPU of the web
console's process and of the browser's.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from telesurg.bench import Result, Row
from telesurg.bench.sessions import pick_domain_pair
from telesurg.console.view import latency_figures
from telesurg.contract.resources import default_config
from telesurg.session.demo import (
    DemoOptions,
    console_url,
    open_links,
    plan_sites,
    session_environment,
)
from telesurg.session.processes import NodeGroup

CHROMEDRIVER = "/usr/bin/chromedriver"
STARTUP_TIMEOUT_S = 60.0
PRESSES = 20
HOLD_S = 0.4
REST_S = 0.8


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ConsoleSession:
    """Both sites with video and the console page in place of the virtual surgeon (the nodes of
    plan_sites as `telesurg demo --console` starts them; the emulated links in this object's
    hands, to cut), and headless Chromium on the page."""

    def __init__(self, out: Path):
        self.out = out
        self.screenshots = out / "screenshots"
        self.screenshots.mkdir(parents=True, exist_ok=True)
        self.stack = contextlib.ExitStack()
        self.groups: list[NodeGroup] = []
        self.exit_codes: dict[str, int] = {}
        self.domains: dict[str, int] = {}
        options = DemoOptions(out=out, video=True, console=True, console_port=free_tcp_port())
        bridge_config, self.links = open_links(options, out, self.stack)
        for site in plan_sites(options, default_config(), pick_domain_pair(), bridge_config):
            group = NodeGroup(session_environment(site.domain_id), out / "logs" / site.name)
            self.groups.append(group)
            for planned in site.processes:
                group.start_planned(planned)
            self.domains[site.name] = site.domain_id
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

    def browser_pids(self) -> list[int]:
        """The browser's processes (its driver's children)."""
        import psutil

        driver = psutil.Process(self.browser.service.process.pid)
        return [child.pid for child in driver.children(recursive=True)]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.browser.quit()
        for group in self.groups:
            self.exit_codes.update(group.stop())
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
            for (let i = 0; i < rgba.length; i += 4) {
              grey.push(rgba[i] + rgba[i + 1] + rgba[i + 2]);
            }
            return grey;""")
        return np.asarray(values, dtype=float) / 3.0

    def screenshot(self, name: str) -> Path:
        path = self.screenshots / f"{name}.png"
        self.browser.save_screenshot(str(path))
        print(f"screenshot: {path}")
        return path


def run() -> Result:
    from telesurg.session.processes import cpu_seconds

    with tempfile.TemporaryDirectory(prefix="telesurg-bench-console-") as folder:
        session = ConsoleSession(Path(folder))
        try:
            session.wait_for(lambda: session.frames_shown() > 3
                             and session.text("links-overall") == "REDUNDANT",
                             STARTUP_TIMEOUT_S, "video and both links up")
            session.click("cmd-enable")
            session.wait_for(lambda: session.text("arm-state") == "ENABLED", 10.0, "ENABLED")
            session.press_key("p")
            session.wait_for(lambda: session.text("following") == "yes", 10.0, "following")
            session.browser.execute_script("window.telesurgFigures.captureToDisplay.length = 0")
            console = next(node for group in session.groups for node in group.nodes
                           if node.spec.name == "web_console")
            browser_pids = session.browser_pids()
            cpu_before = console.cpu_seconds(), sum(cpu_seconds(pid) for pid in browser_pids)
            started = time.monotonic()
            for press in range(PRESSES):
                session.hold_key("d" if press % 2 == 0 else "a", HOLD_S)
                time.sleep(REST_S)
            elapsed = time.monotonic() - started
            cpu_after = console.cpu_seconds(), sum(cpu_seconds(pid) for pid in browser_pids)
            figures = session.browser.execute_script("return window.telesurgFigures")
        finally:
            session.close()
    video = latency_figures(figures["captureToDisplay"])
    keys = latency_figures(figures["keyToMotion"])
    console_cpu, browser_cpu = (round(100.0 * (after - before) / elapsed, 1)
                                for before, after in zip(cpu_before, cpu_after, strict=True))
    result = Result("console", {"capture_to_display_ms": video, "key_to_motion_ms": keys,
                                "presses": PRESSES, "web_console_cpu_percent": console_cpu,
                                "browser_cpu_percent": browser_cpu})
    result.rows = [
        Row("lan, 640x480 per eye", "capture to display p50 / p99",
            f"{video['p50']} / {video['p99']} ms ({video['n']} pictures)"),
        Row("lan", "key press to the arm's motion on the page p50 / p99",
            f"{keys['p50']} / {keys['p99']} ms ({keys['n']} of {PRESSES} presses)"),
        Row("", "CPU: web console / headless Chromium",
            f"{console_cpu} % / {browser_cpu} % of a core"),
    ]
    result.notes.append("Chromium decodes and draws in software here, on the same 2 cores as "
                        "the session.")
    return result
