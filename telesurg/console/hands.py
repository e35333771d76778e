"""A person's hands on the console page, as a master device: what the page sends (a direction
to move in, the gripper opening or closing, the clutch and operator-present pedals) turned into
master samples at the device's rate.

The page sends the controls' state whenever it changes and at least every INPUT_REFRESH_S; a
page that falls silent for INPUT_TIMEOUT_S (closed, crashed, the tab hidden, the network gone)
is a surgeon who left the console: the hand stops and the operator-present pedal is released,
so the console stops following. The hand never leaves its workspace (a box around where it
started), as a real master's arm cannot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from telesurg.master.teleop import MasterInput

INPUT_REFRESH_S = 0.2  # the page repeats its controls' state at least this often
INPUT_TIMEOUT_S = 0.6  # ... and is taken as gone after this long without
GRIPPER_MAX_RAD = 1.2  # a master gripper's opening range is about 0..1.2 rad


class HandInputError(ValueError):
    """A control message from the page that cannot be used; the message names the field."""


@dataclass(frozen=True)
class HandInput:
    """The page's controls: move (x, y, z) and grip each in [-1, 1] (a fraction of full speed;
    grip > 0 opens), the clutch pedal held, the operator-present pedal down."""

    move: tuple[float, float, float] = (0.0, 0.0, 0.0)
    grip: float = 0.0
    clutch: bool = False
    present: bool = False

    @classmethod
    def parse(cls, fields: dict) -> HandInput:
        """From the page's JSON object; HandInputError naming the first bad field."""
        move = fields.get("move", [0.0, 0.0, 0.0])
        if not (isinstance(move, list) and len(move) == 3):
            raise HandInputError(f"move: expected 3 numbers, got {move!r}")
        values = [_fraction(f"move[{axis}]", value) for axis, value in enumerate(move)]
        grip = _fraction("grip", fields.get("grip", 0.0))
        flags = {}
        for name in ("clutch", "present"):
            value = fields.get(name, False)
            if not isinstance(value, bool):
                raise HandInputError(f"{name}: expected true or false, got {value!r}")
            flags[name] = value
        return cls((values[0], values[1], values[2]), grip, **flags)


def _fraction(name: str, value: object) -> float:
    # bool is an int: a true "move" is a bug in the page, not full speed.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HandInputError(f"{name}: expected a number in [-1, 1], got {value!r}")
    if not -1.0 <= value <= 1.0:  # NaN too
        raise HandInputError(f"{name}: {value!r} is not in [-1, 1]")
    return float(value)


class Hands:
    """The master device the page stands in for: step(now) once per device sample."""

    def __init__(self, speed_m_s: float, workspace_half_m: float, grip_speed_rad_s: float,
                 now: float):
        self.speed_m_s = speed_m_s
        self.workspace_half_m = workspace_half_m
        self.grip_speed_rad_s = grip_speed_rad_s
        self.position = np.zeros(3)  # the centre of the master's workspace
        self.rotation = np.eye(3)
        self.gripper = GRIPPER_MAX_RAD / 2
        self.input = HandInput()
        self.heard_at: float | None = None  # when the page last sent its controls
        self._stepped_at = now

    def on_input(self, controls: HandInput, now: float) -> None:
        self.input = controls
        self.heard_at = now

    def page_gone(self, now: float) -> bool:
        """Whether no page is driving: none ever sent its controls, or the last fell silent."""
        return self.heard_at is None or now - self.heard_at > INPUT_TIMEOUT_S

    def step(self, now: float) -> MasterInput:
        """The master sample at now: the hand moved by the controls since the last step."""
        dt = min(max(now - self._stepped_at, 0.0), INPUT_TIMEOUT_S)
        self._stepped_at = now
        controls = HandInput() if self.page_gone(now) else self.input
        move = np.asarray(controls.move)
        norm = float(np.linalg.norm(move))
        if norm > 1.0:  # diagonals no faster than one axis at full speed
            move = move / norm
        half = self.workspace_half_m
        self.position = np.clip(self.position + self.speed_m_s * dt * move, -half, half)
        self.gripper = min(max(self.gripper + self.grip_speed_rad_s * dt * controls.grip, 0.0),
                           GRIPPER_MAX_RAD)
        return MasterInput(position=self.position.copy(), rotation=self.rotation,
                           gripper=self.gripper, clutch=controls.clutch,
                           operator_present=controls.present)


def direction_of(move: tuple[float, float, float]) -> np.ndarray | None:
    """The unit direction of a move, None if it is no move."""
    vector = np.asarray(move, dtype=float)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0.0 and math.isfinite(norm) else None
