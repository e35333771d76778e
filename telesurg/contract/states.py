"""The states the nodes tell each other, as enums: what telesurg compares, publishes and reads
back (the analysis reads them from recordings), never as free text.

- OperatingState and StateCommand: CRTK's arm states and the commands that change them
  (/psm/operating_state, /psm/state_command), kept by the safety supervisor.
- LinkState and OverallState: each bridge's view of its links (/bridge/link_state).
- HoldCause and the arm controller's hold report: why the arm holds, published on /diagnostics
  as key-values (ARM_HOLD_KEYS) whenever it starts or stops holding, stamped with the control
  tick that decided it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class OperatingState(StrEnum):
    DISABLED = "DISABLED"
    ENABLED = "ENABLED"
    PAUSED = "PAUSED"
    FAULT = "FAULT"

    @classmethod
    def parse(cls, text: str) -> OperatingState | None:
        """The state text names, or None if it names none (never taken as ENABLED)."""
        try:
            return cls(text)
        except ValueError:
            return None


class StateCommand(StrEnum):
    """CRTK's state commands (crtk_msgs/StringStamped on /psm/state_command)."""

    ENABLE = "enable"
    DISABLE = "disable"
    HOME = "home"
    UNHOME = "unhome"
    PAUSE = "pause"
    RESUME = "resume"


class LinkState(StrEnum):
    UP = "UP"
    DEGRADED = "DEGRADED"
    DOWN = "DOWN"


class OverallState(StrEnum):
    REDUNDANT = "REDUNDANT"  # two or more links, none DOWN
    SINGLE = "SINGLE"  # some link not DOWN, but no redundancy left (or only one link)
    LOST = "LOST"  # every link DOWN: nothing heard within link_timeout_ms


#: The hardware_id of the overall status in a /bridge/link_state report (the others are links).
LINK_OVERALL_ID = "overall"
#: Overall link states that still carry commands.
LINK_ALIVE = frozenset({OverallState.REDUNDANT, OverallState.SINGLE})


class HoldCause(StrEnum):
    """Why the arm controller holds the arm where it is."""

    NO_COMMAND_YET = "no command yet"
    COMMANDS_STALE = "commands stale"
    NO_COMMAND_SINCE_ENABLED = "no command since ENABLED"
    NOT_ENABLED = "operating state"  # not ENABLED: the report's operating_state says which
    SUPERVISOR_NOT_HEARD = "no operating state from the safety supervisor yet"
    SUPERVISOR_SILENT = "safety supervisor silent"


#: The safety supervisor's status on /diagnostics (DiagnosticStatus.name); its message is the
#: operating state, the array stamped when the supervisor published it.
SAFETY_SUPERVISOR_STATUS = "safety_supervisor"
#: The arm controller's status on /diagnostics (DiagnosticStatus.name) and its key-values.
ARM_CONTROLLER_STATUS = "arm_controller"
HOLDING_KEY = "holding"  # "true" or "false"
HOLD_CAUSE_KEY = "hold_cause"  # a HoldCause, "" while following
OPERATING_STATE_KEY = "operating_state"  # the last OperatingState heard, "" if none


@dataclass(frozen=True)
class ArmHold:
    """One of the arm controller's hold reports, read back from /diagnostics."""

    holding: bool
    cause: HoldCause | None
    operating_state: OperatingState | None

    @classmethod
    def of(cls, status) -> ArmHold | None:
        """The report in a DiagnosticStatus, or None if it is not the arm controller's."""
        if status.name != ARM_CONTROLLER_STATUS:
            return None
        values = {value.key: value.value for value in status.values}
        cause = values.get(HOLD_CAUSE_KEY, "")
        return cls(holding=values.get(HOLDING_KEY) == "true",
                   cause=HoldCause(cause) if cause else None,
                   operating_state=OperatingState.parse(values.get(OPERATING_STATE_KEY, "")))

    @property
    def paused(self) -> bool:
        """Holding because the safety supervisor says PAUSED."""
        return (self.holding and self.cause is HoldCause.NOT_ENABLED
                and self.operating_state is OperatingState.PAUSED)

