"""A session's recording read back: where a run directory keeps the sites' bags, their messages
decoded, and the streams that the summary, the replay comparison and the report all compute
from (tip paths, following, operating state transitions).

Pure: recorded messages in, plain values out. Times are nanoseconds of the machine's wall
clock (both sites' recorders and nodes run on it): receive times, or header stamps where those
tell better when a thing happened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from telesurg.analysis import metrics
from telesurg.bags.storage import decode
from telesurg.contract.fields import stamp_ns, tip_position
from telesurg.contract.topics import MASTER, PATIENT, Topic

#: A run directory's bags, by site (`telesurg demo` writes them, a replay and the report read
#: them).
BAG_DIRS = {MASTER: "master_bag", PATIENT: "patient_bag"}


def decoded(messages: dict, site: str, topic: Topic) -> list[tuple[int, object]]:
    """(arrival ns, message) of a recorded topic at a site, from the recorded messages by site
    and topic name, [(arrival ns, CDR bytes)]."""
    return [(t, decode(data, topic.type_name)) for t, data in messages[site].get(topic.name, [])]


@dataclass(frozen=True)
class Track:
    """Tip positions by time: times_ns (n,) int64, in time order, and positions_m (n, 3)."""

    times_ns: np.ndarray
    positions_m: np.ndarray

    def __len__(self) -> int:
        return len(self.times_ns)


def pose_track(poses: list[tuple[int, object]]) -> Track:
    """Tip positions of PoseStamped messages by header stamp (when the pose was true), sorted,
    one per stamp."""
    stamps = np.array([stamp_ns(message) for _, message in poses], dtype=np.int64)
    positions = np.array([tip_position(m) for _, m in poses], dtype=float).reshape(-1, 3)
    stamps, first = np.unique(stamps, return_index=True)
    return Track(stamps, positions[first])


def tracking_error_series(setpoint: Track, measured: Track,
                          max_gap_s: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """(measured stamps ns, tip distance m): the tracking error of each measured pose against
    the setpoint in force when it was measured (telesurg.analysis.metrics)."""
    return metrics.tracking_error_series(setpoint.times_ns, setpoint.positions_m,
                                         measured.times_ns, measured.positions_m, max_gap_s)


def following_changes(messages: list[tuple[int, object]]) -> list[tuple[int, bool]]:
    """/console/following (Bool) reports as (time, following)."""
    return [(t, message.data) for t, message in messages]


def operating_states(messages: list[tuple[int, object]]) -> list[tuple[int, str]]:
    """/psm/operating_state (crtk_msgs/OperatingState) reports as (time, state); they carry no
    cause (/safety/status does)."""
    return [(t, message.state) for t, message in messages]


@dataclass(frozen=True)
class Transition:
    """A change of the arm's operating state as recorded (patient.safety.Transition is the
    supervisor's own, on its clock in seconds and with the figures behind it)."""

    time_ns: int
    previous: str
    current: str
    cause: str


def safety_states(statuses: list[tuple[int, object]]) -> list[tuple[int, str, str]]:
    """(time, state, cause) of /safety/status reports (String holding JSON); a report that is
    not such JSON is left out."""
    samples = []
    for time_ns, message in statuses:
        try:
            status = json.loads(message.data)
        except json.JSONDecodeError:
            continue
        if isinstance(status, dict) and isinstance(status.get("state"), str):
            samples.append((time_ns, status["state"], str(status.get("cause") or "")))
    return samples


def transitions(samples: list[tuple[int, str, str]]) -> list[Transition]:
    """Every change of state in time-ordered (time, state, cause) samples, with the cause the
    first sample of the new state gives."""
    return [Transition(t, previous, current, cause)
            for (_, previous, _), (t, current, cause) in zip(samples, samples[1:], strict=False)
            if current != previous]
