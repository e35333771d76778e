"""`telesurg report`: report.html with figures of a recorded session (a run directory or a bag).

Three layers, each usable alone:
- reading (load_recording): the sites' bags (telesurg.bags.storage), their messages decoded;
- extraction (command_ages ... task_window, over telesurg.analysis.recording's streams): pure
  functions from decoded messages to plain arrays and intervals, in nanoseconds of the
  machine's wall clock; and the endoscope video as the master site's viewer had it
  (video_series, over telesurg.analysis.video: it decodes the recorded H.264 frames);
- drawing and writing (FIGURES, VIDEO_FIGURES, render_html): one PNG per figure with
  matplotlib's Agg backend, and the page. A figure whose topics were not recorded is skipped,
  and the page says why; the video's section is there only when the video was recorded.
"""

from __future__ import annotations

import contextlib
import datetime
import html
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from telesurg.analysis.recording import (
    BAG_DIRS,
    Track,
    Transition,
    decoded,
    following_changes,
    operating_states,
    pose_track,
    safety_states,
    tracking_error_series,
    transitions,
)
from telesurg.analysis.video import (
    EYES,
    ShownFrame,
    VideoFrames,
    VideoSummaryError,
    print_video_summary,
)
from telesurg.bags.storage import BagError, BagReader, decode
from telesurg.contract import topics
from telesurg.contract.fields import link_state_values, stamp_ns
from telesurg.contract.states import LINK_OVERALL_ID, OperatingState, OverallState
from telesurg.contract.topics import MASTER, PATIENT, SITE_TOPICS
from telesurg.linkem.model import PROFILES

DPI = 100
FIGURES_DIR = "figures"
SUMMARY_FILE = "summary.json"
BAG_SUFFIXES = (".mcap", ".db3")
#: Both sites hold the bridged state topics; where both recorded one, the first site's copy is
#: drawn (the patient site is where the arm is; the master console decides following).
PREFERRED_SITES = {
    topics.PSM_MEASURED_CP.name: (PATIENT,),
    topics.PSM_SETPOINT_CP.name: (PATIENT,),
    # The master's copy is the commands as sent, not delivered.
    topics.PSM_SERVO_CP.name: (PATIENT,),
    topics.BRIDGE_LINK_STATE.name: (PATIENT, MASTER),
    topics.SAFETY_STATUS.name: (PATIENT, MASTER),
    topics.PSM_OPERATING_STATE.name: (PATIENT, MASTER),
    topics.CONSOLE_FOLLOWING.name: (MASTER, PATIENT),
}
#: The topics the master site alone records: a single bag holding one is a master-site bag.
MASTER_ONLY_TOPICS = set(SITE_TOPICS[MASTER]) - set(SITE_TOPICS[PATIENT])
STATE_COLOURS = {OperatingState.DISABLED: "#9e9e9e", OperatingState.ENABLED: "#4caf50",
                 OperatingState.PAUSED: "#ff9800", OperatingState.FAULT: "#e53935"}
LINK_COLOURS = ("tab:blue", "tab:orange", "tab:purple", "tab:brown")
#: How strongly a link's state that is not UP is shaded (DOWN strongest).
OUTAGE_ALPHA = {"DOWN": 0.35, "DEGRADED": 0.15}
#: Opaque, over the links' own shading (which would tint it), under the lines.
LOST_STYLE = {"facecolor": "0.8", "hatch": "//", "edgecolor": "0.2", "zorder": 1.5}
MAX_OUTAGE_ROWS = 40
EYE_COLOURS = {"left": "tab:blue", "right": "tab:orange"}
#: How many left-eye frames the video's strip shows, evenly spaced over the session.
STRIP_FRAMES = 6


class ReportError(Exception):
    """A source that cannot be reported on; the message names the file and the problem."""


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass
class Recording:
    """A session's decoded messages: by site, by topic, [(receive time ns, message)]."""

    bags: dict[str, Path]
    messages: dict[str, dict[str, list[tuple[int, object]]]]
    start_ns: int | None  # earliest message of any bag (None: the bags are empty)
    end_ns: int | None
    unclosed: list[Path] = field(default_factory=list)  # bags whose recorder never closed them
    damage: list[str] = field(default_factory=list)  # what damaged bags lost (accept_damage)
    #: The endoscope's frames by site and topic, [(receive time ns, CDR bytes)]: left encoded
    #: (a session's decoded images would not fit in memory), telesurg.analysis.video decodes them.
    video: dict[str, dict[str, list[tuple[int, bytes]]]] = field(default_factory=dict)

    @property
    def has_video(self) -> bool:
        """Whether the master site recorded the endoscope's video (its left eye)."""
        return topics.ENDOSCOPE_LEFT_COMPRESSED.name in self.video.get(MASTER, {})

    def topic(self, topic: str) -> tuple[str | None, list[tuple[int, object]]]:
        """(site, messages) of the preferred site that recorded the topic; (None, []) if none
        did."""
        for site in PREFERRED_SITES[topic]:
            found = self.messages.get(site, {}).get(topic)
            if found:
                return site, found
        return None, []


def guess_site(topic_names) -> str:
    return MASTER if MASTER_ONLY_TOPICS & set(topic_names) else PATIENT


def load_recording(bags: dict[str | None, Path], accept_damage: bool = False) -> Recording:
    """Read and decode the topics the report draws from each bag (site None: guessed from its
    topics). Raises BagError naming the bag if it cannot be read or a message decoded, or is
    damaged (unless accept_damage: then its sound chunks are read, and the loss noted)."""
    recording = Recording({}, {}, None, None)
    spans = []
    for site, path in bags.items():
        with BagReader(path, accept_damage) as bag:
            site = site or guess_site(bag.topics)
            expected = SITE_TOPICS[site]
            # A topic recorded with another type than the contract's is treated as absent.
            wanted = [t for t in PREFERRED_SITES if site in PREFERRED_SITES[t]
                      and t in bag.topics and bag.topics[t].type == expected.get(t)]
            video = [t.name for t in EYES.values()
                     if t.name in bag.topics and bag.topics[t.name].type == t.type_name]
            raw = bag.read_all(wanted + video)
            if sum(topic.count for topic in bag.topics.values()):
                spans.append((bag.start_ns, bag.end_ns))
            if bag.unclosed:
                recording.unclosed.append(path)
            if bag.damage_note:
                recording.damage.append(bag.damage_note)
        recording.video[site] = {topic: raw.pop(topic) for topic in video}
        site_messages = {}
        for topic, messages in raw.items():
            try:
                site_messages[topic] = [(t, decode(data, expected[topic])) for t, data in messages]
            except Exception as error:  # a corrupt CDR payload inside a readable bag
                raise BagError(f"{path}: undecodable {topic} message: {error}") from None
        recording.bags[site] = path
        recording.messages[site] = site_messages
    if spans:
        recording.start_ns = min(start for start, _ in spans)
        recording.end_ns = max(end for _, end in spans)
    return recording


# ---------------------------------------------------------------------------------------------
# Extraction: pure, decoded messages in, arrays and intervals out.


@dataclass(frozen=True)
class Interval:
    start_ns: int
    end_ns: int
    state: str


@dataclass(frozen=True)
class LinkSeries:
    """One link as a bridge reported it: RTT and loss (NaN where not reported) and states."""

    times_ns: np.ndarray
    rtt_ms: np.ndarray
    loss_pct: np.ndarray
    states: list[tuple[int, str]]


@dataclass(frozen=True)
class LinkHistory:
    links: dict[str, LinkSeries]
    overall: list[tuple[int, str]]  # REDUNDANT / SINGLE / LOST


def command_ages(deliveries: list[tuple[int, object]]) -> tuple[np.ndarray, np.ndarray]:
    """(delivery time ns, age ms) of the commands the patient bridge delivered: the time it was
    recorded at the patient site minus the console's stamp."""
    times = np.array([t for t, _ in deliveries], dtype=np.int64)
    stamps = np.array([stamp_ns(message) for _, message in deliveries], dtype=np.int64)
    return times, (times - stamps) * 1e-6


def state_runs(samples: list[tuple[int, str]], end_ns: int) -> list[Interval]:
    """The runs of equal consecutive states in time-ordered (time, state) samples; the last
    run lasts until end_ns."""
    runs: list[Interval] = []
    for time_ns, state in samples:
        if runs and runs[-1].state == state:
            continue
        if runs:
            runs[-1] = Interval(runs[-1].start_ns, time_ns, runs[-1].state)
        runs.append(Interval(time_ns, time_ns, state))
    if runs:
        runs[-1] = Interval(runs[-1].start_ns, max(end_ns, runs[-1].start_ns), runs[-1].state)
    return runs


def link_history(reports: list[tuple[int, object]]) -> LinkHistory:
    """Per link RTT, loss and state, and the overall state, from /bridge/link_state reports
    (DiagnosticArray), by header stamp: a report of a change and the next one can reach the
    recorder together, while their stamps are when the bridge saw each state."""
    by_link: dict[str, list[tuple[int, str, dict]]] = {}
    overall = []
    for message in sorted((message for _, message in reports), key=stamp_ns):
        time_ns = stamp_ns(message)
        for name, (state, values) in link_state_values(message).items():
            if name == LINK_OVERALL_ID:
                overall.append((time_ns, state))
            else:
                by_link.setdefault(name, []).append((time_ns, state, values))

    def number(values: dict, key: str) -> float:
        try:
            return float(values.get(key) or "nan")
        except ValueError:
            return float("nan")

    links = {
        name: LinkSeries(np.array([t for t, _, _ in rows], dtype=np.int64),
                         np.array([number(v, "rtt_ms") for _, _, v in rows]),
                         np.array([number(v, "loss_percent") for _, _, v in rows]),
                         [(t, state) for t, state, _ in rows])
        for name, rows in sorted(by_link.items())}
    return LinkHistory(links, overall)


def link_outages(history: LinkHistory, end_ns: int) -> dict[str, list[Interval]]:
    """Per link, the intervals its state was not UP (DOWN, DEGRADED, ...)."""
    return {name: [run for run in state_runs(series.states, end_ns) if run.state != "UP"]
            for name, series in history.links.items()}


def lost_intervals(history: LinkHistory, end_ns: int) -> list[Interval]:
    """The intervals the bridge had lost every link (overall LOST)."""
    return [run for run in state_runs(history.overall, end_ns) if run.state == OverallState.LOST]


def task_window(summary: dict, recorded: list[Transition]) -> tuple[int, int] | None:
    """The task's start and end on the bags' clock, if summary.json anchors them: its
    transitions are timed from the task start (t_s), so the first one also recorded gives the
    start, and its duration_s the end. Before and after the task the nodes start and stop,
    which can read as outages and pauses."""
    duration_s = summary.get("duration_s")
    listed = summary.get("transitions")
    if not isinstance(duration_s, int | float) or not isinstance(listed, list):
        return None
    for entry in listed:
        if not isinstance(entry, dict) or not isinstance(entry.get("t_s"), int | float):
            continue
        match = next((t for t in recorded
                      if (t.previous, t.current) == (entry.get("from"), entry.get("to"))), None)
        if match is not None:
            start = match.time_ns - round(entry["t_s"] * 1e9)
            return start, start + round(duration_s * 1e9)
    return None


@dataclass(frozen=True)
class EyeSeries:
    """One eye's counted frames as the master site's viewer had them, by capture time (ns)."""

    shown_ns: np.ndarray  # delivered in order
    latency_ms: np.ndarray  # added latency of each shown frame; NaN: undecodable
    dropped_ns: np.ndarray  # lost, or delivered late (the viewer drops those)

    @property
    def undecodable_ns(self) -> np.ndarray:
        return self.shown_ns[np.isnan(self.latency_ms)]


@dataclass(frozen=True)
class VideoSeries:
    eyes: dict[str, EyeSeries]
    strip: list[ShownFrame]  # decoded left-eye frames evenly spaced over the session
    first_ns: int  # capture time of the left eye's first counted frame


def video_series(messages: dict) -> VideoSeries:
    """The endoscope video as the master site's viewer had it, from the sites' recorded frames
    by site and topic, [(receive time ns, CDR bytes)]. The recordings do not tell the links'
    profiles: the added latency includes the link's one-way delay. Raises VideoSummaryError
    when the patient site recorded no frame."""
    frames = VideoFrames({site: messages.get(site, {}) for site in (MASTER, PATIENT)}, 0.0)
    # The strip spans the left frames the master site received: none before the links are up.
    received = sorted(frames.counted["left"] & {
        stamp_ns(message) for _, message in decoded(frames.messages, MASTER, EYES["left"])})
    targets = np.linspace(received[0], received[-1], STRIP_FRAMES) if received else []
    # For each of the strip's times, the nearest decoded frame so far: only those images are
    # kept, not the session's.
    nearest: list[ShownFrame | None] = [None] * len(targets)
    shown: dict[str, list[tuple[int, float]]] = {eye: [] for eye in EYES}
    for frame in frames.shown():
        shown[frame.eye].append((frame.capture_ns, np.nan if frame.image is None
                                 else frame.latency_ms))
        if frame.eye != "left" or frame.image is None:
            continue
        for index, target in enumerate(targets):
            if nearest[index] is None or \
                    abs(frame.capture_ns - target) < abs(nearest[index].capture_ns - target):
                nearest[index] = frame
    eyes = {}
    for eye, rows in shown.items():
        shown_ns = np.array([t for t, _ in rows], dtype=np.int64)
        dropped = sorted(frames.counted[eye] - set(shown_ns.tolist()))
        eyes[eye] = EyeSeries(shown_ns, np.array([ms for _, ms in rows], dtype=float),
                              np.array(dropped, dtype=np.int64))
    # Sparse frames can leave two of the strip's times the same nearest frame.
    strip = list({frame.capture_ns: frame for frame in nearest if frame is not None}.values())
    return VideoSeries(eyes, strip, min(frames.counted["left"], default=0))


@dataclass
class Session:
    """Everything the figures draw, extracted from a Recording; None where not recorded."""

    start_ns: int
    end_ns: int
    measured: Track | None = None
    setpoint: Track | None = None
    delivered: Track | None = None
    tracking_error: tuple[np.ndarray, np.ndarray] | None = None
    command_age: tuple[np.ndarray, np.ndarray] | None = None
    links: LinkHistory | None = None
    links_site: str = ""
    states: list[tuple[int, str, str]] | None = None
    states_topic: str = ""
    following: list[tuple[int, bool]] | None = None
    task: tuple[int, int] | None = None
    video: VideoSeries | None = None
    video_problem: str = ""  # why there is no VideoSeries though the master site recorded one

    def seconds(self, times_ns) -> np.ndarray:
        """Times as seconds since the recording started (every figure's time axis)."""
        return (np.asarray(times_ns, dtype=np.int64) - self.start_ns) * 1e-9

    @property
    def span_s(self) -> float:
        return (self.end_ns - self.start_ns) * 1e-9

    def outages(self) -> dict[str, list[Interval]]:
        return link_outages(self.links, self.end_ns) if self.links else {}

    def lost(self) -> list[Interval]:
        return lost_intervals(self.links, self.end_ns) if self.links else []

    def transitions(self) -> list[Transition]:
        return transitions(self.states) if self.states else []


def extract_session(recording: Recording, summary: dict) -> Session:
    session = Session(recording.start_ns or 0, recording.end_ns or 0)

    def track(topic: str) -> Track | None:
        poses = recording.topic(topic)[1]
        return pose_track(poses) if poses else None

    session.measured = track(topics.PSM_MEASURED_CP.name)
    session.setpoint = track(topics.PSM_SETPOINT_CP.name)
    session.delivered = track(topics.PSM_SERVO_CP.name)
    if session.measured and session.setpoint:
        session.tracking_error = tracking_error_series(session.setpoint, session.measured)
    deliveries = recording.topic(topics.PSM_SERVO_CP.name)[1]
    if deliveries:
        session.command_age = command_ages(deliveries)
    site, reports = recording.topic(topics.BRIDGE_LINK_STATE.name)
    if reports:
        session.links, session.links_site = link_history(reports), site
    statuses = safety_states(recording.topic(topics.SAFETY_STATUS.name)[1])
    if statuses:
        session.states, session.states_topic = statuses, topics.SAFETY_STATUS.name
    elif (states := recording.topic(topics.PSM_OPERATING_STATE.name)[1]):
        session.states = [(t, state, "") for t, state in operating_states(states)]
        session.states_topic = topics.PSM_OPERATING_STATE.name
    following = recording.topic(topics.CONSOLE_FOLLOWING.name)[1]
    if following:
        session.following = following_changes(following)
    session.task = task_window(summary, session.transitions())
    if recording.has_video:
        try:
            session.video = video_series(recording.video)
        except VideoSummaryError as error:
            session.video_problem = str(error)
    return session


# ---------------------------------------------------------------------------------------------
# Drawing


def _pyplot():
    """pyplot on the Agg backend (files only, no display), imported when first drawing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def saved_figure(path: Path, rows: int = 1, columns: int = 1, size=(10.0, 4.5),
                 **subplots) -> Iterator[tuple[object, np.ndarray]]:
    """A new figure and its axes (flat array), saved to path as PNG when the block ends and
    closed in any case (pyplot keeps every open figure)."""
    plt = _pyplot()
    figure, axes = plt.subplots(rows, columns, figsize=size, squeeze=False,
                                layout="constrained", **subplots)
    try:
        yield figure, axes.ravel()
        figure.savefig(path, dpi=DPI)
    finally:
        plt.close(figure)


def time_axis(ax, session: Session, bottom: bool = True, top: bool = True) -> None:
    """The shared time axis: the whole recording, with the task's start and end marked (named
    above the top axes, clear of the data and legends; the bottom axes has the axis label)."""
    ax.set_xlim(0.0, max(session.span_s, 1e-3))
    if bottom:
        ax.set_xlabel("time since the recording started (s)")
    if session.task:
        for edge, text in zip(session.seconds(session.task), ("task start", "task end"),
                              strict=True):
            ax.axvline(edge, color="0.4", linestyle=":", linewidth=1.0)
            if top:
                ax.annotate(text, (edge, 1.0), xycoords=("data", "axes fraction"),
                            xytext=(0, 2), textcoords="offset points", ha="center",
                            va="bottom", fontsize=7, color="0.3")
    ax.grid(True, alpha=0.3)


def counted(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def shade(ax, session: Session, intervals: list[Interval], **style) -> None:
    # An edge line keeps an outage of a few milliseconds visible at the session's scale.
    for interval in intervals:
        start, end = session.seconds([interval.start_ns, interval.end_ns])
        ax.axvspan(start, end, linewidth=0.8, **style)


def draw_tip_path(session: Session, path: Path) -> str:
    # The setpoint wide and pale under the thin measured path: where the arm tracks well, the
    # measured path runs inside it; where not, the two part.
    paths = [(session.delivered, "commands delivered (/psm/servo_cp)",
              {"color": "0.45", "linestyle": ":", "linewidth": 1.0}),
             (session.setpoint, "setpoint (/psm/setpoint_cp)",
              {"color": "tab:orange", "linewidth": 3.0, "alpha": 0.5}),
             (session.measured, "measured (/psm/measured_cp)",
              {"color": "tab:blue", "linewidth": 0.9})]
    with saved_figure(path, 1, 2, size=(11.0, 5.0)) as (figure, axes):
        for ax, (second, name) in zip(axes, ((1, "y"), (2, "z")), strict=True):
            for track, label, style in paths:
                if track is not None:
                    mm = track.positions_m * 1e3
                    ax.plot(mm[:, 0], mm[:, second], label=label, **style)
            start = session.measured.positions_m[0] * 1e3
            ax.plot(start[0], start[second], "o", color="tab:blue", label="measured start")
            ax.set_xlabel("x (mm)")
            ax.set_ylabel(f"{name} (mm)")
            ax.set_title(f"x-{name} projection")
            ax.set_aspect("equal", adjustable="datalim")
            ax.grid(True, alpha=0.3)
        axes[0].legend(fontsize=8, loc="best")
        figure.suptitle("Arm tip path (psm_base frame)")
    commanded = " and the ".join(label.split(" (")[0] for track, label, _ in paths[1::-1]
                                 if track)
    return (f"The arm tip's measured path against the {commanded or 'commanded path'}, seen "
            "from above (x-y) and from the side (x-z).")


def draw_tracking_error(session: Session, path: Path) -> str:
    stamps, errors_m = session.tracking_error
    errors_mm = errors_m * 1e3
    with saved_figure(path) as (figure, (ax,)):
        ax.plot(session.seconds(stamps), errors_mm, color="tab:blue", linewidth=0.8,
                label="measured vs setpoint")
        if errors_mm.size:
            p99 = float(np.percentile(errors_mm, 99))
            ax.axhline(p99, color="tab:red", linestyle="--", linewidth=1.0,
                       label=f"p99 {p99:.3f} mm")
            ax.legend(fontsize=8, loc="upper right")
        ax.set_ylabel("tip tracking error (mm)")
        ax.set_ylim(bottom=0.0)
        time_axis(ax, session)
        figure.suptitle("Tracking error: measured tip vs setpoint at the same moment")
    return (f"Distance between the measured tip and the setpoint interpolated at each of "
            f"{errors_mm.size} measurement stamps.")


def draw_links(session: Session, path: Path) -> str:
    plt = _pyplot()
    history = session.links
    outages, lost = session.outages(), session.lost()
    colours = dict(zip(history.links, LINK_COLOURS, strict=False))
    with saved_figure(path, 2, 1, size=(11.0, 6.0), sharex=True) as (figure, (rtt, loss)):
        for name, series in history.links.items():
            for ax, values in ((rtt, series.rtt_ms), (loss, series.loss_pct)):
                ax.plot(session.seconds(series.times_ns), values, color=colours[name],
                        linewidth=0.9)
        handles = [plt.Line2D([], [], color=colours[name], label=f"link {name}")
                   for name in history.links]
        for name, intervals in outages.items():
            for state in sorted({i.state for i in intervals}):
                style = {"color": colours[name], "alpha": OUTAGE_ALPHA.get(state, 0.25)}
                for ax in (rtt, loss):
                    shade(ax, session, [i for i in intervals if i.state == state], **style)
                handles.append(plt.Rectangle((0, 0), 1, 1, **style,
                                             label=f"link {name} {state}"))
        if lost:
            for ax in (rtt, loss):
                shade(ax, session, lost, **LOST_STYLE)
            handles.append(plt.Rectangle((0, 0), 1, 1, **LOST_STYLE, label="all links LOST"))
        rtts = np.concatenate([[np.nan], *(s.rtt_ms for s in history.links.values())])
        positive = rtts[rtts > 0]
        if positive.size and positive.max() > 10 * positive.min():
            # A few ms usually, a hundred in a stall: a log scale keeps both readable.
            rtt.set_yscale("log")
            rtt.yaxis.set_major_formatter(plt.FuncFormatter(lambda value, _: f"{value:g}"))
        rtt.set_ylabel("round-trip time (ms)")
        loss.set_ylabel("loss (%)")
        # At least 0-1 %: no loss then reads as a flat line at 0, not as noise.
        loss.set_ylim(0.0, max(1.0, float(np.nanmax(np.concatenate(
            [[0.0], *(s.loss_pct for s in history.links.values())]))) * 1.1))
        time_axis(rtt, session, bottom=False)
        time_axis(loss, session, top=False)
        rtt.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        figure.suptitle(f"Links as the {session.links_site} bridge saw them")
    outage_count = sum(len(i) for i in outages.values())
    return (f"Round-trip time and loss of each link as the {session.links_site} bridge "
            f"reported them, with the {counted(outage_count, 'interval')} a link was not UP "
            f"shaded in its colour and the {counted(len(lost), 'interval')} every link was lost "
            "hatched.")


def draw_operating_state(session: Session, path: Path) -> str:
    plt = _pyplot()
    # The operating state on top, where its transitions are annotated.
    lanes = [("arm", state_runs([(t, s) for t, s, _ in session.states], session.end_ns))]
    if session.following:
        following = [(t, "following" if engaged else "not following")
                     for t, engaged in session.following]
        lanes.insert(0, ("surgeon", state_runs(following, session.end_ns)))
    lane_colours = {**STATE_COLOURS, "following": "#1e88e5", "not following": "#e0e0e0"}
    changes = session.transitions()
    with saved_figure(path, size=(11.0, 3.0 + 0.3 * min(len(changes), 6))) as (figure, (ax,)):
        for row, (_, runs) in enumerate(lanes):
            for run in runs:
                start, end = session.seconds([run.start_ns, run.end_ns])
                ax.broken_barh([(start, end - start)], (row - 0.4, 0.8),
                               facecolors=lane_colours.get(run.state, "#795548"))
        ax.set_yticks(range(len(lanes)), [
            "operating state" if name == "arm" else "surgeon following" for name, _ in lanes])
        top = len(lanes) - 0.6
        for index, change in enumerate(changes):
            at = session.seconds([change.time_ns])[0]
            level = top + 0.35 * (1 + index % 4)  # staggered so close ones don't overlap
            text = f"{change.current}: {change.cause}" if change.cause else change.current
            # Text to the right of its moment, or to the left near the end; the line from the
            # text's lower corner straight down to the moment.
            right = at > 0.75 * session.span_s
            ax.annotate(text, (at, top), xytext=(at, level), fontsize=8,
                        ha="right" if right else "left", va="bottom",
                        arrowprops={"arrowstyle": "-", "color": "0.3", "linewidth": 0.8,
                                    "relpos": (1.0 if right else 0.0, 0.0)})
        ax.set_ylim(-0.6, top + 0.35 * (1 + min(len(changes), 4)) + 0.4)
        time_axis(ax, session)
        used = {run.state for _, runs in lanes for run in runs}
        ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colour, label=state)
                           for state, colour in lane_colours.items() if state in used],
                  fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
        figure.suptitle(f"Operating state ({session.states_topic}) and its transitions")
    causes = "with the cause of each" if session.states_topic == topics.SAFETY_STATUS.name else \
        "(no causes recorded: from /psm/operating_state)"
    return (f"The arm's operating state over time and its {counted(len(changes), 'transition')}, "
            f"{causes}" + ("; below it, when the surgeon's console was following."
                           if session.following else "."))


def draw_command_age(session: Session, path: Path) -> str:
    times, ages_ms = session.command_age
    with saved_figure(path) as (figure, (ax,)):
        ax.plot(session.seconds(times), ages_ms, ".", markersize=2, color="tab:blue",
                label="command age on delivery")
        for quantile, style in ((50, ":"), (99, "--")):
            value = float(np.percentile(ages_ms, quantile))
            ax.axhline(value, color="tab:red", linestyle=style, linewidth=1.0,
                       label=f"p{quantile} {value:.1f} ms")
        ax.set_ylabel("command age (ms)")
        ax.set_ylim(bottom=0.0)
        ax.legend(fontsize=8, loc="upper right")
        time_axis(ax, session)
        figure.suptitle("Age of each command when the patient bridge delivered it")
    return (f"Age of each of the {ages_ms.size} delivered commands: the patient site's "
            "receive time minus the console's stamp.")


def draw_video_strip(session: Session, path: Path) -> str:
    video = session.video
    with saved_figure(path, 1, max(len(video.strip), 1), size=(12.0, 2.3)) as (figure, axes):
        for ax in axes:
            ax.set_axis_off()
        for ax, frame in zip(axes, video.strip, strict=False):
            ax.imshow(frame.image)
            ax.set_title(f"{(frame.capture_ns - video.first_ns) * 1e-9:.1f} s, "
                         f"{frame.latency_ms:.0f} ms", fontsize=9)
        if not video.strip:
            axes[0].text(0.5, 0.5, "no left-eye frame could be decoded", ha="center",
                         va="center")
        figure.suptitle("Left eye as the master site's viewer showed it")
    return (f"{counted(len(video.strip), 'left-eye frame')} evenly spaced over the session, "
            "decoded as the master site's viewer would; above each, the time since the first "
            "frame's capture and the frame's added latency.")


def draw_video_latency(session: Session, path: Path) -> str:
    eyes = session.video.eyes
    with saved_figure(path, 2, 1, size=(11.0, 5.0), sharex=True,
                      gridspec_kw={"height_ratios": (4, 1)}) as (figure, (latency, missed)):
        for row, (eye, series) in enumerate(eyes.items()):
            colour = EYE_COLOURS[eye]
            latency.plot(session.seconds(series.shown_ns), series.latency_ms, ".",
                         markersize=3, color=colour, label=f"{eye} eye")
            for times, marker, what in ((series.dropped_ns, "|", "dropped"),
                                        (series.undecodable_ns, "x", "undecodable")):
                missed.plot(session.seconds(times), np.full(times.size, row), marker,
                            markersize=8, color=colour, label=f"{eye}: {times.size} {what}")
        latency.set_ylabel("added latency (ms)")
        latency.set_ylim(bottom=0.0)
        missed.set_yticks(range(len(eyes)), [f"{eye} eye" for eye in eyes])
        missed.set_ylim(-0.6, len(eyes) - 0.4)
        missed.set_ylabel("not shown", fontsize=8)
        time_axis(latency, session, bottom=False)
        time_axis(missed, session, top=False)
        figure.legend(fontsize=8, loc="outside right upper")
        figure.suptitle("Added latency of each decoded frame, and the frames not shown")
    dropped = sum(series.dropped_ns.size for series in eyes.values())
    undecodable = sum(series.undecodable_ns.size for series in eyes.values())
    return (f"Added latency of each decoded frame by its capture time, both eyes; below, the "
            f"{counted(dropped, 'frame')} dropped (lost, or delivered late) and the "
            f"{undecodable} undecodable (after a loss, until the next keyframe).")


@dataclass(frozen=True)
class FigureSpec:
    name: str
    title: str
    needs: tuple[tuple[str, str], ...]  # (Session field, topic that records it)
    draw: Callable[[Session, Path], str]  # writes the PNG, returns the caption

    def missing(self, session: Session) -> list[str]:
        return [topic for attribute, topic in self.needs if getattr(session, attribute) is None]


FIGURES = (
    FigureSpec("tip_path", "Tip path", (("measured", topics.PSM_MEASURED_CP.name),),
               draw_tip_path),
    FigureSpec("tracking_error", "Tracking error",
               (("measured", topics.PSM_MEASURED_CP.name),
                ("setpoint", topics.PSM_SETPOINT_CP.name)), draw_tracking_error),
    FigureSpec("links", "Links", (("links", topics.BRIDGE_LINK_STATE.name),), draw_links),
    FigureSpec("operating_state", "Operating state",
               (("states", f"{topics.SAFETY_STATUS.name} or {topics.PSM_OPERATING_STATE.name}"),),
               draw_operating_state),
    FigureSpec("command_age", "Command age", (("command_age", "/psm/servo_cp (patient site)"),),
               draw_command_age),
)
#: The endoscope video's section: drawn when the master site recorded the video.
VIDEO_NEEDS = (("video", f"{topics.ENDOSCOPE_LEFT_COMPRESSED.name} (master site)"),)
VIDEO_FIGURES = (
    FigureSpec("video_strip", "Left eye over the session", VIDEO_NEEDS, draw_video_strip),
    FigureSpec("video_latency", "Added latency", VIDEO_NEEDS, draw_video_latency),
)


# ---------------------------------------------------------------------------------------------
# The page


@dataclass(frozen=True)
class DrawnFigure:
    spec: FigureSpec
    caption: str | None  # None: skipped
    reason: str = ""


def flatten(summary: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested dicts as dotted keys (tracking_error_mm.p99), in order."""
    rows = []
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(flatten(value, f"{name}."))
        else:
            rows.append((name, value))
    return rows


def _cell(value) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, list):
        if value and all(isinstance(item, dict) for item in value):
            return _table(value)
        return html.escape(", ".join(str(item) for item in value))
    if isinstance(value, dict):
        return html.escape(json.dumps(value))
    return html.escape(str(value))


def _table(rows: list[dict], header: list[str] | None = None) -> str:
    """A table of dicts, one column per key (in first-seen order)."""
    header = header or list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{html.escape(str(key))}</th>" for key in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(row.get(key))}</td>" for key in header)
                   + "</tr>" for row in rows)
    return f"<table class='small'><tr>{head}</tr>{body}</table>"


def _summary_section(summary: dict | None, summary_path: Path | None) -> str:
    if summary is None:
        return "<h2>Summary</h2><p>No summary.json: only the recording is shown.</p>"
    rows = "".join(f"<tr><th>{html.escape(key)}</th><td>{_cell(value)}</td></tr>"
                   for key, value in flatten(summary))
    return (f"<h2>Summary</h2><p class='note'>From {html.escape(str(summary_path))}; times in "
            f"it (t_s) are from the task start.</p><table>{rows}</table>")


def _outage_section(session: Session) -> str:
    if not session.links:
        return ""
    outages = [(name, i) for name, intervals in session.outages().items() for i in intervals]
    outages += [("all", i) for i in session.lost()]
    outages.sort(key=lambda outage: outage[1].start_ns)
    rows = [{"link": name, "state": i.state,
             "from (s)": f"{session.seconds([i.start_ns])[0]:.3f}",
             "lasted (ms)": f"{(i.end_ns - i.start_ns) * 1e-6:.1f}"} for name, i in outages]
    if session.task:  # outside the task, nodes starting or stopping look like outages
        for row, (_, interval) in zip(rows, outages, strict=True):
            row["when"] = ("before the task" if interval.end_ns <= session.task[0] else
                           "after the task" if interval.start_ns >= session.task[1] else
                           "during the task")
    title = f"<h2>Link outages ({html.escape(session.links_site)} bridge's view)</h2>"
    if not rows:
        return title + "<p>Every link was UP throughout.</p>"
    more = len(rows) - MAX_OUTAGE_ROWS
    shown = _table(rows[:MAX_OUTAGE_ROWS])
    return title + shown + (f"<p class='note'>and {more} more.</p>" if more > 0 else "")


def _figure(drawn: DrawnFigure) -> str:
    e = html.escape
    if drawn.caption is None:
        return (f"<h3>{e(drawn.spec.title)}</h3><p class='skipped'>Not drawn: "
                f"{e(drawn.reason)}.</p>")
    return (f"<figure><h3>{e(drawn.spec.title)}</h3>"
            f"<img src='{FIGURES_DIR}/{drawn.spec.name}.png' alt='{e(drawn.spec.title)}'>"
            f"<figcaption>{e(drawn.caption)}</figcaption></figure>")


def _video_section(recording: Recording, session: Session, summary: dict | None,
                   figures: list[DrawnFigure]) -> str:
    if not recording.has_video:
        return ""
    title = "<h2>Endoscope video</h2>"
    if session.video is None:
        return title + f"<p class='skipped'>Not drawn: {html.escape(session.video_problem)}.</p>"
    note = ("<p class='note'>Added latency: from a frame's capture to its image decoded at the "
            "master site (its arrival at the master site's recorder, plus its decode on this "
            "machine). The recordings do not tell the links' profiles, so here it includes the "
            f"link's one-way delay ({PROFILES['lan'].delay_ms:g} ms on the demo's default lan "
            "links); summary.json's figures are less it. The figures cover the whole "
            "recording, summary.json's the session up to the task's end.</p>")
    lines = []
    video = (summary or {}).get("video")
    if isinstance(video, dict):
        with contextlib.suppress(KeyError, TypeError, AttributeError):  # not as a demo writes it
            print_video_summary(video, lines.append)
    figures_html = "".join(_figure(drawn) for drawn in figures if drawn.spec in VIDEO_FIGURES)
    return (title + "".join(f"<p>From {SUMMARY_FILE}, {html.escape(line.strip())}.</p>"
                            for line in lines) + note + figures_html)


PAGE_STYLE = """
body { font-family: sans-serif; max-width: 1150px; margin: 1em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: left; font-size: 0.9em; }
th { background: #f4f4f4; font-weight: normal; }
table.small td, table.small th { font-size: 0.85em; }
figure { margin: 1.5em 0; } img { max-width: 100%; border: 1px solid #ddd; }
figcaption, .note { color: #555; font-size: 0.9em; }
.skipped { color: #a05a00; }
"""


def render_html(source: Path, recording: Recording, session: Session, summary: dict | None,
                summary_path: Path | None, figures: list[DrawnFigure]) -> str:
    e = html.escape
    if recording.start_ns is not None:
        started = datetime.datetime.fromtimestamp(recording.start_ns * 1e-9, datetime.UTC)
        when = f"{started:%Y-%m-%d %H:%M:%S} UTC"
        span = f"{session.span_s:.1f} s recorded"
    else:
        when, span = "unknown (no messages)", "nothing recorded"
    if summary and isinstance(summary.get("duration_s"), int | float):
        span += f" (task {summary['duration_s']} s)"
    bags = "".join(f"<li>{e(site)} site: {e(str(path))}</li>"
                   for site, path in recording.bags.items()) or "<li>no bags</li>"
    notes = "".join(f"<p class='skipped'>{e(str(path))} was never closed (its recorder "
                    "stopped abruptly): read up to its last checkpoint.</p>"
                    for path in recording.unclosed) + "".join(
        f"<p class='skipped'>{e(note)}.</p>" for note in recording.damage)
    sections = "".join(_figure(drawn) for drawn in figures if drawn.spec in FIGURES)
    task = ("<p class='note'>Dotted lines mark the task's start and end (from summary.json); "
            "before and after it the nodes start and stop.</p>" if session.task else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>telesurg session report: {e(str(source))}</title>
<style>{PAGE_STYLE}</style></head>
<body>
<h1>telesurg session report</h1>
<p>Source: {e(str(source))}</p>
<ul>{bags}</ul>
<p>Recorded {e(when)}; {e(span)}.</p>
{notes}
{_summary_section(summary, summary_path)}
{_outage_section(session)}
<h2>Figures</h2>
{task}
{sections}
{_video_section(recording, session, summary, figures)}
</body></html>
"""


# ---------------------------------------------------------------------------------------------
# Entry points


@dataclass(frozen=True)
class Sources:
    bags: dict[str | None, Path]  # by site (None: a single bag, site guessed from its topics)
    summary: Path | None
    default_out: Path


def is_bag(path: Path) -> bool:
    if path.is_file():
        return path.suffix in BAG_SUFFIXES
    return path.is_dir() and ((path / "metadata.yaml").exists()
                              or any(p.suffix in BAG_SUFFIXES for p in path.iterdir()))


def find_sources(source: Path) -> Sources:
    """What a run directory or a single bag holds; ReportError if it is neither."""
    if not source.exists():
        raise ReportError(f"{source}: no such file or directory")
    if is_bag(source):
        return Sources({None: source}, None, source.parent)
    run_parts = [source / name for name in (*BAG_DIRS.values(), SUMMARY_FILE)]
    if not source.is_dir() or not any(part.exists() for part in run_parts):
        raise ReportError(f"{source}: neither a run directory (master_bag/, patient_bag/, "
                          "summary.json) nor a rosbag2 bag (.mcap, .db3, or a directory with "
                          "metadata.yaml)")
    bags = {site: source / name for site, name in BAG_DIRS.items() if (source / name).exists()}
    summary = source / SUMMARY_FILE
    return Sources(bags, summary if summary.exists() else None, source)


def read_summary(path: Path) -> dict:
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ReportError(f"{path}: not valid JSON: {error}") from None
    except UnicodeDecodeError:
        raise ReportError(f"{path}: not valid JSON: not UTF-8 text") from None
    if not isinstance(summary, dict):
        raise ReportError(f"{path}: not a JSON object")
    return summary


def build_report(source: Path, out_dir: Path | None,
                 accept_damage: bool = False) -> tuple[Path, Recording, int]:
    """Write report.html and its figures; return the page's path, the recording it drew and
    how many figures were drawn. Raises BagError or ReportError (messages naming the file)."""
    sources = find_sources(source)
    summary = read_summary(sources.summary) if sources.summary else None
    recording = load_recording(sources.bags, accept_damage)
    session = extract_session(recording, summary or {})
    out_dir = out_dir if out_dir is not None else sources.default_out
    figures_dir = out_dir / FIGURES_DIR
    figures_dir.mkdir(parents=True, exist_ok=True)
    drawn = []
    for spec in FIGURES + VIDEO_FIGURES:
        png = figures_dir / f"{spec.name}.png"
        missing = spec.missing(session)
        if missing:
            png.unlink(missing_ok=True)  # an earlier report's figure would mislead
            reason = (f"{', '.join(missing)} not recorded" if recording.bags else
                      "no bags in the run directory")
            drawn.append(DrawnFigure(spec, None, reason))
        else:
            drawn.append(DrawnFigure(spec, spec.draw(session, png)))
    page = out_dir / "report.html"
    page.write_text(render_html(source, recording, session, summary, sources.summary, drawn))
    return page, recording, sum(1 for figure in drawn if figure.caption is not None)


def write_report(run_dir: Path, out_dir: Path) -> Path:
    """Write out_dir/report.html and out_dir/figures/*.png for a run directory; return the
    page's path. Raises BagError for a bag that cannot be read."""
    return build_report(Path(run_dir), Path(out_dir))[0]


def run_report(source: Path, out: Path | None, accept_damage: bool = False) -> int:
    """`telesurg report`: 0 when the report was written, 2 (one line on stderr) when the source
    cannot be reported on or the report not written."""
    try:
        page, recording, count = build_report(Path(source),
                                              Path(out) if out is not None else None,
                                              accept_damage)
    except (BagError, ReportError) as error:
        print(f"telesurg report: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"telesurg report: {error.filename or out}: {error.strerror}", file=sys.stderr)
        return 2
    for note in recording.damage:
        print(f"telesurg report: {note}", file=sys.stderr)
    print(f"wrote {page} ({count} figures)")
    return 0
