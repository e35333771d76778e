"""MuJoCo physics of the arm, loaded from the same URDF Gazebo spawns. Pure Python (no rclpy).

Each joint gets a position servo, as ros2_control's position interface gives in Gazebo. Gains
are set from the arm's own joint-space inertia so that every joint responds alike (a critically
damped servo of the configured bandwidth). The PSM is counterbalanced, so gravity is
compensated on every body.
"""

from __future__ import annotations

import math
from pathlib import Path

import mujoco
import numpy as np

from telesurg.arm.kinematics import JOINT_NAMES

#: Reflected drive inertia per joint (kg m^2, or kg for the insertion stage): the motors and
#: capstans behind each joint. Kept small enough that the servos stay inside the URDF effort
#: limits (MuJoCo applies them) during brisk surgical motion.
DRIVE_ARMATURE = {"outer_yaw": 0.02, "outer_pitch": 0.02, "outer_insertion": 0.2,
                  "outer_roll": 0.0002, "outer_wrist_pitch": 0.0002, "outer_wrist_yaw": 0.0002,
                  "jaw": 0.0002}


class ArmSimulation:
    def __init__(self, urdf_path: str | Path, timestep: float, initial_positions,
                 servo_bandwidth_hz: float = 60.0):
        spec = mujoco.MjSpec.from_file(str(urdf_path))
        spec.option.timestep = timestep
        # Stiff position servos need the implicit treatment of their damping to stay stable.
        spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
        for body in spec.bodies:
            body.gravcomp = 1.0
        joints = {joint.name: joint for joint in spec.joints}
        missing = [name for name in JOINT_NAMES if name not in joints]
        if missing:
            raise ValueError(f"{urdf_path}: URDF lacks joints {missing}")
        for name in JOINT_NAMES:
            joints[name].armature = DRIVE_ARMATURE[name]
        actuators = [spec.add_actuator(name=f"{name}_position", target=name,
                                       trntype=mujoco.mjtTrn.mjTRN_JOINT) for name in JOINT_NAMES]
        for actuator in actuators:
            actuator.set_to_position(kp=1.0, kv=0.0)
        self.model = spec.compile()
        self.data = mujoco.MjData(self.model)
        joint_ids = [self.model.joint(name).id for name in JOINT_NAMES]
        self._qpos = np.array([self.model.jnt_qposadr[j] for j in joint_ids])
        self._qvel = np.array([self.model.jnt_dofadr[j] for j in joint_ids])
        self.data.qpos[self._qpos] = initial_positions
        self.data.ctrl[:] = initial_positions
        mujoco.mj_forward(self.model, self.data)
        self._tune_servos(servo_bandwidth_hz)

    def _tune_servos(self, bandwidth_hz: float) -> None:
        mass_matrix = np.zeros((self.model.nv, self.model.nv))
        mujoco.mj_fullM(self.model, self.data, mass_matrix)
        omega = 2.0 * math.pi * bandwidth_hz
        for index, dof in enumerate(self._qvel):
            inertia = mass_matrix[dof, dof]
            kp, kv = inertia * omega**2, 2.0 * inertia * omega
            self.model.actuator_gainprm[index, 0] = kp
            self.model.actuator_biasprm[index, 1:3] = (-kp, -kv)

    def place(self, positions) -> None:
        """Put the joints at positions at once, at rest, commanded to stay (a pose to render,
        not a motion)."""
        self.data.qpos[self._qpos] = positions
        self.data.qvel[self._qvel] = 0.0
        self.data.ctrl[:] = positions
        mujoco.mj_forward(self.model, self.data)

    def command(self, positions) -> None:
        self.data.ctrl[:] = positions

    def step(self, steps: int = 1) -> None:
        mujoco.mj_step(self.model, self.data, nstep=steps)

    @property
    def time(self) -> float:
        return float(self.data.time)

    def positions(self) -> np.ndarray:
        return self.data.qpos[self._qpos].copy()

    def velocities(self) -> np.ndarray:
        return self.data.qvel[self._qvel].copy()

    def efforts(self) -> np.ndarray:
        return self.data.actuator_force.copy()


class RealTimeArm:
    """An ArmSimulation kept in step with a monotonic clock (seconds), as a real arm would be:
    advance(now) runs the physics steps due by now."""

    #: Most steps run at once: a stalled process catches up (the real arm would have moved
    #: meanwhile) but beyond a quarter second (at 1 kHz) it drops time rather than race.
    MAX_CATCH_UP_STEPS = 250

    def __init__(self, sim: ArmSimulation, timestep: float, start_s: float):
        self.sim = sim
        self.timestep = timestep
        self._start_s = start_s
        self.steps_done = 0
        self.dropped_steps = 0

    def advance(self, now_s: float) -> int:
        """Run the steps due by now_s (at most MAX_CATCH_UP_STEPS, the rest dropped); return
        how many ran."""
        due = int((now_s - self._start_s) / self.timestep) - self.steps_done
        if due <= 0:
            return 0
        if due > self.MAX_CATCH_UP_STEPS:
            self.dropped_steps += due - self.MAX_CATCH_UP_STEPS
            self.steps_done += due - self.MAX_CATCH_UP_STEPS
            due = self.MAX_CATCH_UP_STEPS
        self.sim.step(due)
        self.steps_done += due
        return due

    @property
    def elapsed_s(self) -> float:
        """The physics time since the start: what the arm's state stands for."""
        return self.steps_done * self.timestep
