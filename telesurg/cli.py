"""The `telesurg` command: sessions and tools for remote robotic surgery on ROS 2."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from telesurg.bags.storage import STORAGES, BagError
from telesurg.bench import BENCHMARKS, RESULTS_PATH
from telesurg.console.options import DEFAULT_BIND, DEFAULT_PORT, add_page_options, tcp_port
from telesurg.contract.graph import DEFAULT_LINKS
from telesurg.contract.params import ARM_HARDWARE, NODE_PARAMETERS
from telesurg.contract.topics import SITES
from telesurg.linkem.model import ALL_LINKS, PROFILES, parse_outage
from telesurg.session.operator_cli import STATE_COMMANDS, parse_domain

LINK_PROFILES = tuple(PROFILES)


def _number_in(low: float, high: float, unit: str = ""):
    """An argparse type: a number in [low, high], refused with a message that says so."""
    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:  # NaN too
            raise argparse.ArgumentTypeError(f"{text} is not in [{low:g}, {high:g}]{unit}")
        return value
    return number


_positive_seconds = _number_in(1.0, 3600.0, " seconds")
_rate = _number_in(0.01, 100.0)
_start = _number_in(0.0, 86400.0, " seconds")


def _seed(text: str) -> int:
    """The virtual surgeon's seed, in the range its parameter accepts."""
    seed = next(p for p in NODE_PARAMETERS["virtual_surgeon"] if p.name == "seed")
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not seed.low <= value <= seed.high:
        raise argparse.ArgumentTypeError(f"{text} is out of range: must be {seed.range_text()}")
    return value


def _outage(text: str):
    try:
        link, outage = parse_outage(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if link not in (*DEFAULT_LINKS, ALL_LINKS):
        raise argparse.ArgumentTypeError(f"outage {text!r}: unknown link {link!r}: one of "
                                         f"{', '.join(DEFAULT_LINKS)} or {ALL_LINKS}")
    return link, outage


def _benchmark(text: str) -> str:
    if text != "all" and text not in BENCHMARKS:
        raise argparse.ArgumentTypeError(f"no benchmark {text!r}: one of all, "
                                         f"{', '.join(BENCHMARKS)}")
    return text


def _domain(text: str) -> int:
    try:
        return parse_domain(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_domain_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--domain", type=_domain, default=None, metavar="N",
                        help="DDS domain id of the site, in [0, 232] (default: ROS_DOMAIN_ID, "
                             "else 0)")


def _add_accept_damage_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accept-damage", action="store_true",
                        help="read a damaged recording (a chunk failing its checksum or "
                             "structure) without its damaged chunks, saying how many messages "
                             "of which topics were lost; without it, damage is an error "
                             "(exit 2) naming the file and where")


def _add_site_options(parser: argparse.ArgumentParser, timeout_help: str) -> None:
    _add_domain_option(parser)
    parser.add_argument("--timeout", type=_positive_seconds, default=10.0, metavar="S",
                        help=timeout_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="telesurg",
        description="Remote robotic surgery on ROS 2: a master console drives a simulated "
                    "patient-side surgical arm.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo", help="run a telesurgery session in simulation and write its figures",
        description="Start the master site (virtual surgeon, master console, bridge) and the "
                    "patient site (bridge, safety supervisor, arm controller with the MuJoCo arm) "
                    "as processes on "
                    "two DDS domains, joined only by the bridges over two emulated links a and "
                    "b; run a task, stop cleanly, and write OUT/summary.json with tracking "
                    "error, tip jumps, limit violations, command delivery and link figures. "
                    "With --video, also the stereo endoscope and its video figures.")
    demo.add_argument("--task", choices=("suturing", "figure8"), default="suturing",
                      help="what the virtual surgeon does (default: suturing)")
    demo.add_argument("--duration", type=_positive_seconds, default=None,
                      help="seconds of task after the graph is up (default: 20)")
    demo.add_argument("--seed", type=_seed, default=1,
                      help="seed of the surgeon's tremor and timing (default: 1)")
    demo.add_argument("--out", type=Path, default=Path("runs/latest"),
                      help="output directory for summary.json and logs (default: runs/latest)")
    demo.add_argument("--config", type=Path, default=None,
                      help="ROS 2 parameter file (default: the installed config/telesurg.yaml)")
    demo.add_argument("--profile", choices=LINK_PROFILES, default="lan",
                      help="emulated network of both links (default: lan)")
    for link in DEFAULT_LINKS:
        demo.add_argument(f"--link-{link}", choices=LINK_PROFILES, default=None,
                          help=f"emulated network of link {link} (default: --profile)")
    demo.add_argument("--outage", type=_outage, action="append", default=[],
                      metavar="LINK@START+DURATION",
                      help="cut link a, b or all from START for DURATION seconds after the task "
                           "starts, e.g. a@5+5; repeatable")
    demo.add_argument("--no-record", dest="record", action="store_false",
                      help="leave no bags in OUT (the figures still come from a temporary "
                           "recording, deleted at the end)")
    demo.add_argument("--storage", choices=tuple(STORAGES), default="mcap",
                      help="storage of the recorded bags (default: mcap)")
    demo.add_argument("--no-report", dest="report", action="store_false",
                      help="do not write OUT/report.html and its figures")
    demo.add_argument("--replay", type=Path, default=None, metavar="RUN_DIR",
                      help="drive the session from RUN_DIR/master_bag (the surgeon's device and "
                           "pedals as recorded, from the moment the arm was enabled) instead of "
                           "the virtual surgeon, and compare the new arm tip path with "
                           "RUN_DIR/patient_bag's (replay_deviation_mm in summary.json); "
                           "--task and --seed are then ignored and --duration defaults to the "
                           "recording's")
    _add_accept_damage_option(demo)
    demo.add_argument("--arm-hardware", choices=ARM_HARDWARE, default=ARM_HARDWARE[0],
                      help="the arm controller's hardware: mujoco (the simulation in the "
                           "controller, the default) or ros2_control (the simulator node "
                           "behind /joint_states and /forward_position_controller/commands, "
                           "as Gazebo or a real arm would be)")
    demo.add_argument("--video", action=argparse.BooleanOptionalAction, default=False,
                      help="run the patient site's stereo endoscope (MuJoCo render, H.264 per "
                           "eye, about half a core at 640x480 and 30 fps), carry its video to "
                           "the master site over both links, record it at both sites and add "
                           "its figures to the summary (default: --no-video)")
    demo.add_argument("--process-per-node", dest="compose", action="store_false",
                      help="run every node in a process of its own, instead of each site's "
                           "site container (master: virtual_surgeon, master_console, bridge; "
                           "patient: bridge, safety_supervisor) beside the arm controller")
    demo.add_argument("--console", action="store_true",
                      help="a person drives instead of the virtual surgeon: start the console "
                           "page (see `telesurg console`) at the master site, print its URL, "
                           "leave enabling the arm to its buttons, and run until Ctrl-C (or "
                           "--duration); figures as usual")
    demo.add_argument("--console-port", type=tcp_port, default=DEFAULT_PORT, metavar="PORT",
                      help=f"with --console: the page's TCP port on {DEFAULT_BIND} (default: "
                           f"{DEFAULT_PORT})")
    console = commands.add_parser(
        "console", help="serve the surgeon's console page for a running master site",
        description="Serve a web page (on 127.0.0.1 unless --bind says otherwise; always behind "
                    "a token, printed in its URL) that shows the endoscope video, the arm's "
                    "state and its cause, the console's pedals and following, and each link's "
                    "state, RTT and loss with the last 30 s plotted; its buttons send enable, "
                    "pause, resume and disable. The page's keyboard, mouse and gamepad are the "
                    "master device (/mtm/measured_cp, /mtm/gripper/measured_js, /console/clutch, "
                    "/console/operator_present), mapped by the master console as a real "
                    "master's; it watches only while another master device (a virtual surgeon) "
                    "publishes, and publishes nothing for its first 4 s while it looks for one. "
                    "Runs until Ctrl-C.")
    _add_domain_option(console)
    add_page_options(console)
    console.add_argument("--config", type=Path, default=None,
                         help="ROS 2 parameter file with a web_console section (default: the "
                              "installed config/telesurg.yaml)")
    record = commands.add_parser(
        "record", help="record a site's contract topics into a rosbag2 bag until Ctrl-C",
        description="Subscribe to every contract topic of the site (the README's topic table) "
                    "in its DDS domain and write each message, as received, into a new rosbag2 "
                    "bag at OUT: metadata.yaml (topic types, type hashes, offered QoS, message "
                    "counts, duration) and one MCAP (default) or sqlite3 file. Ctrl-C or SIGTERM "
                    "closes the bag; if the recorder is killed, at most the last second is "
                    "lost (it checkpoints every second).")
    record.add_argument("--site", choices=SITES, required=True, help="which site's topics")
    record.add_argument("--out", type=Path, required=True, help="bag directory to create")
    record.add_argument("--video", action="store_true",
                        help="also record the endoscope's compressed video (a session run with "
                             "video)")
    record.add_argument("--storage", choices=tuple(STORAGES), default="mcap",
                        help="storage format (default: mcap)")
    _add_domain_option(record)
    replay = commands.add_parser(
        "replay", help="publish a recorded bag with its original timing and QoS",
        description="Publish the messages of BAG (a rosbag2 directory, or an .mcap or .db3 "
                    "file: telesurg's or `ros2 bag record`'s) in the DDS domain, each topic "
                    "with the QoS its recorded publishers offered, each message at its "
                    "recorded time offset divided by --rate. With --start, transient-local "
                    "topics (states) first get their last value before the start. Exit "
                    "status 0 when played (or interrupted), 2 when the bag cannot be read or "
                    "lacks a topic asked for.")
    replay.add_argument("bag", type=Path, metavar="BAG", help="bag to play")
    _add_accept_damage_option(replay)
    replay.add_argument("--rate", type=_rate, default=1.0,
                        help="playback speed factor, in [0.01, 100] (default: 1)")
    replay.add_argument("--start", type=_start, default=0.0, metavar="S",
                        help="seconds into the bag to start from (default: 0)")
    replay.add_argument("--topics", nargs="+", default=None, metavar="TOPIC",
                        help="play only these topics (default: all)")
    replay.add_argument("--loop", action="store_true", help="play again from --start, forever")
    replay.add_argument("--wait-subscribers", type=_start, default=0.0, metavar="S",
                        help="first wait up to S seconds until every played topic has a "
                             "subscriber (default: 0, start at once)")
    _add_domain_option(replay)
    report = commands.add_parser(
        "report", help="write report.html with figures from a run directory or a bag",
        description="Read RUN_DIR (master_bag, patient_bag and summary.json of `telesurg "
                    "demo`) or a single patient-site bag, and write report.html with PNG "
                    "figures beside it: arm tip path against the commanded path, tracking "
                    "error, per-link round-trip time and loss with outages shaded, operating "
                    "state timeline with causes, command age; and the summary figures.")
    report.add_argument("source", type=Path, metavar="RUN_DIR_OR_BAG")
    _add_accept_damage_option(report)
    report.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where to write report.html (default: RUN_DIR, or beside the bag)")
    bench = commands.add_parser(
        "bench", help="measure telesurg against raw UDP, a single link and Zenoh",
        description="Run benchmarks (all by default, as `make bench` does), print a Markdown "
                    "table of their figures with the command behind each, and merge them into "
                    "bench/results.json. "
                    + "; ".join(f"{name}: {what}" for name, (_, what) in BENCHMARKS.items())
                    + ".")
    bench.add_argument("names", nargs="*", type=_benchmark, metavar="NAME",
                       help="benchmarks to run: " + ", ".join(BENCHMARKS) + " (default: all)")
    bench.add_argument("--results", type=Path, default=RESULTS_PATH, metavar="FILE",
                       help=f"results file to merge into (default: {RESULTS_PATH})")
    commands.add_parser(
        "linkem", add_help=False,
        help="emulate a long-distance link between two UDP endpoints (delay, jitter, loss, "
             "outages); `telesurg linkem --help` for its options")
    keygen = commands.add_parser(
        "keygen", help="write a new pre-shared key file for the bridges (mode 0600)",
        description="Write 32 random bytes, hex-encoded, to PATH with mode 0600. Copy the same "
                    "file to both sites (by a secure channel) and name it in key_file of the "
                    "bridge configuration.")
    keygen.add_argument("path", type=Path, metavar="PATH", help="key file to write")
    keygen.add_argument("--force", action="store_true",
                        help="replace an existing key file (the other site then needs the new "
                             "one too)")
    state = commands.add_parser(
        "state", help="enable, disable, home, unhome, pause or resume the arm and print the "
                      "resulting state",
        description="Publish one state command on /psm/state_command in the site's DDS domain "
                    "(normally the master site: its bridge carries the command to the patient "
                    "site's safety supervisor), wait for the supervisor's answer on "
                    "/safety/status and print it, e.g. `resume: accepted (PAUSED -> ENABLED); "
                    "state ENABLED` or `enable: refused: REASON; state DISABLED`. Exit status: "
                    "0 accepted, 1 refused, 2 usage error, or no subscriber, no status or no "
                    "answer within --timeout.")
    state.add_argument("state_command", choices=STATE_COMMANDS, metavar="COMMAND",
                       help="one of: " + ", ".join(STATE_COMMANDS))
    _add_site_options(state, "seconds to wait for the site and the answer, in all "
                             "(default: 10)")
    status = commands.add_parser(
        "status", help="print the arm's live state, its cause, following and link health",
        description="Print the safety state (/psm/operating_state, /safety/status: the cause "
                    "of the last transition, what persists, warnings), whether the console "
                    "follows (/console/following) and each link's health as this site's bridge "
                    "sees it (/bridge/link_state): one line per change, at most twice a "
                    "second, until Ctrl-C. What has not been heard yet is shown as \"no report "
                    "yet\", a report that stopped coming as stale.")
    status.add_argument("--once", action="store_true",
                        help="print the first complete picture and exit: 0 complete, 1 "
                             "something still unknown after --timeout (printed anyway), 2 "
                             "nothing heard")
    _add_site_options(status, "with --once: seconds to wait for a complete picture; else: "
                              "warn when nothing is heard for this long (default: 10)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["linkem"]:  # the relay has its own options and help
        from telesurg.linkem.relay import main as relay_main

        return relay_main(argv[1:])
    args = build_parser().parse_args(argv)
    # A SIGTERM ends a session like Ctrl-C does: nodes stopped, nothing left running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.command == "demo":
        return _demo(args)
    if args.command == "keygen":
        return _keygen(args)
    if args.command == "state":
        from telesurg.session.operator_cli import run_state

        return run_state(args.state_command, args.domain, args.timeout)
    if args.command == "status":
        from telesurg.session.operator_cli import run_status

        return run_status(args.domain, args.once, args.timeout)
    if args.command == "console":
        return _console(args)
    if args.command == "record":
        from telesurg.bags.recorder import run_record

        return run_record(args.site, args.out, args.storage, args.domain, args.video)
    if args.command == "replay":
        from telesurg.bags.player import run_replay

        return run_replay(args.bag, args.rate, args.start, args.topics, args.loop, args.domain,
                          args.wait_subscribers, args.accept_damage)
    if args.command == "bench":
        from telesurg.bench import run_bench

        return run_bench(args.names, args.results)
    if args.command == "report":
        from telesurg.analysis.report import run_report

        return run_report(args.source, args.out, args.accept_damage)

    return 2


def _keygen(args) -> int:
    from telesurg.bridge.wire import write_key

    if args.path.exists() and not args.force:
        print(f"telesurg keygen: {args.path} exists; not replacing a key the other site may "
              "share (use --force to replace it)", file=sys.stderr)
        return 2
    try:
        args.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_key(args.path)
    except OSError as error:
        print(f"telesurg keygen: cannot write {args.path}: {error.strerror}", file=sys.stderr)
        return 2
    print(f"wrote a new key to {args.path} (mode 0600); copy it to the other site")
    return 0


def _console(args) -> int:
    import os

    from telesurg.contract.graph import WEB_CONSOLE
    from telesurg.contract.resources import default_config
    from telesurg.nodes.web_console import main as web_console_main
    from telesurg.session.processes import node_arguments

    if args.domain is not None:
        os.environ["ROS_DOMAIN_ID"] = str(args.domain)
    options = ["--bind", args.bind, "--port", str(args.port)]
    if args.token_file is not None:
        options += ["--token-file", str(args.token_file)]
    config = args.config or default_config()
    web_console_main([*options, *node_arguments(WEB_CONSOLE, ["--params-file", str(config)])])
    return 0


def _demo(args) -> int:
    from telesurg.analysis.summary import print_summary
    from telesurg.analysis.video import print_video_summary
    from telesurg.session.demo import DemoError, DemoOptionError, DemoOptions, run_demo

    options = DemoOptions(task=args.task, duration_s=args.duration, seed=args.seed,
                          out=args.out, config=args.config,
                          link_profiles=(args.link_a or args.profile, args.link_b or args.profile),
                          outages=tuple(args.outage), record=args.record, storage=args.storage,
                          replay=args.replay, report=args.report,
                          accept_damage=args.accept_damage, arm_hardware=args.arm_hardware,
                          compose=args.compose, video=args.video, console=args.console,
                          console_port=args.console_port)
    try:
        summary = run_demo(options)
    except BagError as error:
        print(f"telesurg demo: {error}", file=sys.stderr)
        return 2
    except DemoOptionError as error:
        print(f"telesurg demo: {error}", file=sys.stderr)
        return 2
    except DemoError as error:
        print(f"telesurg demo: failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("telesurg demo: interrupted; all nodes stopped", file=sys.stderr)
        return 130
    print_summary(summary)
    if "video" in summary:
        print_video_summary(summary["video"])
    console = summary.get("console")
    if console:
        print("  console page: " + "; ".join(
            f"{name} " + (f"p50 {value['p50']} ms, p99 {value['p99']} ms ({value['n']})"
                          if value else "not measured")
            for name, value in (("capture to display", console["capture_to_display_ms"]),
                                ("key to motion", console["key_to_motion_ms"]))))
    print(f"summary written to {options.out / 'summary.json'}")
    if summary["faults"]:
        fault = summary["faults"][0]
        print(f"telesurg demo: failed: the arm went to FAULT at {fault['t_s']} s "
              f"({fault['cause']}) and stayed out of teleoperation until a person clears it; "
              f"see the [safety_supervisor] lines in {options.out / 'logs' / 'patient'}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
