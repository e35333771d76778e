"""web_console: the surgeon's console page (`telesurg console`), at the master site.

Serves a local web page (telesurg.console.server) showing the endoscope video, the arm's state
and its cause, the console's pedals and following, and both links; its buttons send the state
commands. The page's keyboard, mouse and gamepad are the master device: this node publishes
/mtm/measured_cp and /mtm/gripper/measured_js at rate_hz and the clutch and operator-present
pedals, which the master console maps as it would a real master's (scale, clutch, tremor filter).
It does not publish them while another master device does (a virtual surgeon): two would fight.

Options before --ros-args: --bind, --port and --token-file (telesurg.console.options), and
--figures FILE (where to write the page's latency figures as JSON when it stops).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import threading
import time
from pathlib import Path

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from std_msgs.msg import String

from telesurg.console.hands import HandInput, HandInputError, Hands, direction_of
from telesurg.console.options import MIN_TOKEN_CHARS, add_page_options
from telesurg.console.server import ConsoleServer, ConsoleServerError
from telesurg.console.view import Answer, CommandDesk, ConsoleView, MotionWatch
from telesurg.contract import topics
from telesurg.contract.fields import stamp_ns, tip_position
from telesurg.ros.loop import NodeLoop
from telesurg.ros.master_device import MasterDeviceOutput
from telesurg.ros.messages import state_command
from telesurg.ros.node import declare_parameters, run_node
from telesurg.ros.qos import publisher, subscription
from telesurg.ros.stereo_video import EYE_NAMES
from telesurg.video.codec import is_keyframe

#: How often the node checks whether another master device publishes.
OTHER_DEVICE_CHECK_S = 1.0
#: Nothing is published before this long after start: discovery takes 0.5-3.5 s here, and a
#: running session's master device must be seen before this one's pedal states could reach
#: its console (a released operator-present pedal would stop the surgeon following).
DISCOVERY_GRACE_S = 4.0
LOOKING = "looking for another master device before driving"


def parse_options(argv: list[str]) -> argparse.Namespace:
    """The options before --ros-args."""
    parser = argparse.ArgumentParser(
        prog="web_console", description="The surgeon's console page at the master site.")
    add_page_options(parser)
    parser.add_argument("--figures", type=Path, default=None, metavar="FILE",
                        help="write the pages' latency figures (capture to display, key to "
                             "motion: p50, p99, n) to FILE as JSON when stopping")
    own = argv[:argv.index("--ros-args")] if "--ros-args" in argv else argv
    options = parser.parse_args(own)
    if options.token_file is None:
        options.token = secrets.token_urlsafe(16)
    else:
        try:
            options.token = options.token_file.read_text().strip()
        except OSError as error:
            parser.error(f"--token-file {options.token_file}: {error.strerror}")
        if len(options.token) < MIN_TOKEN_CHARS:
            parser.error(f"--token-file {options.token_file}: the token must have at least "
                         f"{MIN_TOKEN_CHARS} characters")
    return options


class WebConsoleNode(Node):
    def __init__(self, options: argparse.Namespace):
        super().__init__("web_console")
        p = declare_parameters(self, "web_console")
        self._lock = threading.Lock()  # the view, hands and desk: the web thread uses them too
        now = time.monotonic()
        self.view = ConsoleView()
        self.hands = Hands(p.hand_speed_m_s, p.workspace_half_m, p.grip_speed_rad_s, now)
        self.desk = CommandDesk()
        self.motion = MotionWatch()
        self._driver: int | None = None  # the page whose controls drive the hands
        # The master topics' publishers: made once no other master device is seen
        # (_check_other_device); until then the page only watches.
        self.device: MasterDeviceOutput | None = None
        self._command_pub = publisher(self, topics.PSM_STATE_COMMAND)
        self._keyframe_pub = publisher(self, topics.ENDOSCOPE_KEYFRAME_REQUEST)
        self._started = now
        self.view.hands_blocked = LOOKING
        picture = self.view.picture
        subscription(self, topics.PSM_OPERATING_STATE,
                     lambda m: self._locked(picture.on_state, time.monotonic(), m.state,
                                            m.is_homed))
        subscription(self, topics.SAFETY_STATUS, self._on_status)
        subscription(self, topics.CONSOLE_FOLLOWING,
                     lambda m: self._locked(picture.on_following, time.monotonic(), m.data))
        subscription(self, topics.BRIDGE_LINK_STATE, self._on_link_state)
        subscription(self, topics.PSM_MEASURED_CP, self._on_arm_pose)
        for eye, topic in enumerate((topics.ENDOSCOPE_LEFT_COMPRESSED,
                                     topics.ENDOSCOPE_RIGHT_COMPRESSED)):
            subscription(self, topic, lambda m, eye=eye: self._on_frame(eye, m))
        self._figures_path: Path | None = options.figures
        self.server = ConsoleServer(options.bind, options.port, options.token,
                                    self._on_page_message, self._on_page_connect,
                                    self._on_page_disconnect)
        self.server.start()
        self.loop = NodeLoop(self)
        self.loop.every(1.0 / p.rate_hz, self._sample)
        self.loop.every(1.0 / p.state_rate_hz, self._send_state)
        self.loop.every(OTHER_DEVICE_CHECK_S, self._check_other_device)
        self.loop.every(OTHER_DEVICE_CHECK_S, self._count_video_sources)
        self.get_logger().info(f"console page: {self.server.url()}")

    def _locked(self, function, *args):
        with self._lock:
            return function(*args)

    # -- what the site says -------------------------------------------------------------------

    def _on_status(self, message: String) -> None:
        with self._lock:
            self.view.picture.on_status(time.monotonic(), message.data)
            status = self.view.picture.status
            answer = self.desk.on_status(status) if status is not None else None
        if answer is not None:
            self._answer(answer)

    def _on_link_state(self, message) -> None:
        with self._lock:
            now = time.monotonic()
            before = (self.view.picture.links or {}).get("overall")
            self.view.picture.on_link_state(now, message.status)
            self.view.on_links(now)
            overall = self.view.picture.links["overall"]
        if overall != before:
            self.get_logger().info(f"links: {before or 'unknown'} -> {overall}")

    def _on_arm_pose(self, message: PoseStamped) -> None:
        tip = tip_position(message)
        with self._lock:
            self.view.tip = tip.tolist()
            press = self.motion.on_tip(tip, time.monotonic())
        if press is not None:  # with the tip, which the page shows at once
            self.server.send({"type": "motion", "press": press,
                              "tip_mm": [round(1e3 * v, 2) for v in tip.tolist()]})

    def _on_frame(self, eye: int, message) -> None:
        if not self.server.has_pages:  # 60 frames a second, for nobody
            return
        data = bytes(message.data)
        self.server.send_frame(eye, is_keyframe(data), stamp_ns(message) / 1e6, data)

    # -- the master device --------------------------------------------------------------------

    def _sample(self) -> None:
        with self._lock:
            master = self.hands.step(time.monotonic())
            self.view.clutch, self.view.operator_present = master.clutch, master.operator_present
            blocked = self.view.hands_blocked
        if blocked:
            return
        if self.device.publish(self.get_clock().now().to_msg(), master.position,
                               master.rotation, master.gripper, master.clutch,
                               master.operator_present):
            self.get_logger().info(
                f"operator present: {'yes' if master.operator_present else 'no'}")

    def _count_video_sources(self) -> None:
        """Whether the site has video at all (a session without it: the page says so)."""
        sources = min(self.count_publishers(topic.name) for topic in (
            topics.ENDOSCOPE_LEFT_COMPRESSED, topics.ENDOSCOPE_RIGHT_COMPRESSED))
        with self._lock:
            self.view.video_sources = sources

    def _check_other_device(self) -> None:
        if time.monotonic() - self._started < DISCOVERY_GRACE_S:
            return
        others = [info.node_name for info in
                  self.get_publishers_info_by_topic(topics.MTM_MEASURED_CP.name)
                  if (info.node_name, info.node_namespace) != (self.get_name(),
                                                              self.get_namespace())]
        reason = (f"another master device publishes {topics.MTM_MEASURED_CP.name} "
                  f"({', '.join(sorted(set(others)))}): this page only watches"
                  if others else "")
        if reason == self.view.hands_blocked:
            return
        if reason:
            if self.device is not None:
                self.device.destroy()
                self.device = None
            self.get_logger().warning(reason)
        else:
            self.device = MasterDeviceOutput(self)
            self.get_logger().info("no other master device: the page's controls drive")
        with self._lock:
            self.view.hands_blocked = reason

    # -- the pages ----------------------------------------------------------------------------

    def _send_state(self) -> None:
        now = time.monotonic()
        with self._lock:
            self.view.hands_driving = not self.hands.page_gone(now)
            message = self.view.state_message(now)
            expired = self.desk.expired(now)
        self.server.send(message)
        if expired is not None:
            self._answer(expired)

    def _answer(self, answer: Answer) -> None:
        self.get_logger().info(f"state command: {answer.text}")
        self.server.send({"type": "answer", "text": answer.text, "accepted": answer.accepted})

    def _on_page_connect(self, page: int) -> dict:
        """A page connected (the web server's thread): its first state, with the links'
        history, and a keyframe of each eye asked for so that its video starts now."""
        for eye in EYE_NAMES:
            self._keyframe_pub.publish(String(data=eye))
        self.get_logger().info(f"page {page} connected")
        with self._lock:
            message = self.view.state_message(time.monotonic(), with_history=True)
        return {**message, "page": page}

    def _on_page_disconnect(self, page: int) -> None:
        self.get_logger().info(f"page {page} disconnected")
        with self._lock:
            if self._driver == page:
                self._driver = None
                self.hands.heard_at = None  # its hands left the console: stop, pedal up

    def _on_page_message(self, page: int, message: dict) -> None:
        kind = message.get("type")
        now = time.monotonic()
        if kind == "input":
            self._on_input(page, message, now)
        elif kind == "command":
            command = str(message.get("command"))
            with self._lock:
                refused = self.desk.send(command, now)
            if refused is not None:
                self.server.send({"type": "answer", "text": refused, "accepted": False}, page)
                return
            self.get_logger().info(f"page {page}: {command}")
            self._command_pub.publish(state_command(command, self.get_clock()))
        elif kind == "latency":
            with self._lock:
                self.view.on_page_latency(message)
        else:
            self.server.send({"type": "error", "text": f"unknown message type {kind!r}"}, page)

    def _on_input(self, page: int, message: dict, now: float) -> None:
        try:
            controls = HandInput.parse(message)
        except HandInputError as error:
            self.server.send({"type": "error", "text": f"input refused: {error}"}, page)
            return
        with self._lock:
            if self._driver != page and not self.hands.page_gone(now):
                refused = "another page drives the master; this one only watches"
            else:
                refused = ""
                if self._driver != page:
                    self.get_logger().info(f"page {page} drives the master")
                self._driver = page
                self.hands.on_input(controls, now)
                press = message.get("press")
                direction = direction_of(controls.move)
                if isinstance(press, int) and direction is not None:
                    tip = None if self.view.tip is None else np.asarray(self.view.tip)
                    self.motion.start(press, direction, tip, now)
        if refused:
            self.server.send({"type": "error", "text": refused}, page)

    def destroy_node(self):
        self.server.stop()
        latency = self.view.latency()
        if self._figures_path is not None:
            self._figures_path.write_text(json.dumps(latency, indent=2) + "\n")
        self.get_logger().info(
            "console page figures: capture to display "
            f"{_figures(latency['capture_to_display_ms'])}; key to motion "
            f"{_figures(latency['key_to_motion_ms'])}")
        super().destroy_node()


def _figures(figures: dict | None) -> str:
    return "none" if figures is None else (f"p50 {figures['p50']} ms, p99 {figures['p99']} ms "
                                           f"over {figures['n']}")


def main(args=None):
    args = sys.argv[1:] if args is None else args
    options = parse_options(args)

    def create() -> WebConsoleNode:
        try:
            return WebConsoleNode(options)
        except ConsoleServerError as error:
            print(f"web_console: {error}", file=sys.stderr, flush=True)
            sys.exit(2)

    run_node("web_console", create, args)


if __name__ == "__main__":
    main()
