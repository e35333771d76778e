"""Virtual surgeon: repeatable, smooth, with presence, clutch repositioning and tremor."""

import numpy as np
import pytest
from scipy import signal

from telesurg.master.surgeon import TASKS, VirtualSurgeon

RATE_HZ = 200.0


def timed_samples(surgeon: VirtualSurgeon, duration_s: float, rate_hz: float) -> list:
    """(t, sample) at t = 0, 1/rate_hz, ... up to duration_s."""
    count = int(round(duration_s * rate_hz)) + 1
    return [(t, surgeon.sample(t)) for t in np.arange(count) / rate_hz]


@pytest.fixture(scope="module", params=TASKS)
def session(request):
    """Positions, clutch flags and samples of a 40 s session at 200 Hz."""
    samples = timed_samples(VirtualSurgeon(request.param, seed=7), 40.0, RATE_HZ)
    positions = np.array([sample.position for _, sample in samples])
    clutch = np.array([sample.clutch for _, sample in samples])
    return samples, positions, clutch


def _clutch_windows(clutch):
    """(press, release) sample indices of every completed clutch."""
    edges = np.diff(clutch.astype(int))
    return list(zip(np.flatnonzero(edges == 1) + 1, np.flatnonzero(edges == -1) + 1,
                    strict=False))


def test_same_seed_same_samples_in_any_order():
    times = [12.3, 0.1, 7.77, 3.0, 12.3]
    first = [VirtualSurgeon("suturing", 3).sample(t) for t in times]
    surgeon = VirtualSurgeon("suturing", 3)
    second = [surgeon.sample(t) for t in reversed(times)][::-1]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.position, b.position)
        np.testing.assert_array_equal(a.rotation, b.rotation)
        assert (a.gripper, a.clutch, a.operator_present) == (b.gripper, b.clutch,
                                                             b.operator_present)


def test_different_seeds_differ():
    a, b = VirtualSurgeon("figure8", 1), VirtualSurgeon("figure8", 2)
    assert not np.allclose(a.sample(5.0).position, b.sample(5.0).position, atol=1e-4)


def test_operator_present_from_half_a_second(session):
    samples, _, _ = session
    for t, sample in samples[:200]:
        assert sample.operator_present == (t >= 0.5)


def test_motion_is_smooth_and_within_speed_limit(session):
    _, positions, _ = session
    velocity = np.diff(positions, axis=0) * RATE_HZ
    assert np.linalg.norm(velocity, axis=1).max() < 0.15
    # C1: no velocity jumps anywhere, clutch edges included (tremor alone reaches ~1.6 m/s^2).
    acceleration = np.linalg.norm(np.diff(velocity, axis=0), axis=1) * RATE_HZ
    assert acceleration.max() < 3.0


def test_stays_in_the_master_workspace(session):
    # The task creeps along at 3 mm/s (12 cm over the session): only the clutch
    # repositioning keeps the hand in the workspace.
    _, positions, _ = session
    assert np.abs(positions).max() < 0.06


def test_clutch_repositions_every_6_to_8_seconds(session):
    _, positions, clutch = session
    windows = _clutch_windows(clutch)
    assert len(windows) >= 4
    presses = np.array([press for press, _ in windows]) / RATE_HZ
    assert np.all((np.diff(presses) >= 6.0) & (np.diff(presses) <= 8.0))
    for press, release in windows:
        assert (release - press) / RATE_HZ == pytest.approx(0.6, abs=0.01)
    # The hand visibly moves back while clutched: the repositioning is the same every time,
    # whereas the (slowed) task motion during the clutch differs and averages out.
    moves = np.array([positions[release] - positions[press] for press, release in windows])
    assert np.linalg.norm(moves.mean(axis=0)) > 0.015


def test_suturing_gripper_closes_and_opens_every_pass():
    samples = timed_samples(VirtualSurgeon("suturing", 4), 10.0, RATE_HZ)
    closed = np.array([sample.gripper for _, sample in samples]) < 0.3
    closings = np.count_nonzero(np.diff(closed.astype(int)) == 1)
    assert closings >= 2  # ~0.22 Hz passes


def _tremor_band_rms(task, tremor_amplitude_m):
    samples = timed_samples(VirtualSurgeon(task, 11, tremor_amplitude_m), 20.0, 1000.0)
    positions = np.array([sample.position for _, sample in samples])
    band = signal.butter(4, (8.0, 12.0), "bandpass", fs=1000.0, output="sos")
    return np.sqrt(np.mean(signal.sosfiltfilt(band, positions, axis=0)[2000:-2000] ** 2, axis=0))


@pytest.mark.parametrize("task", TASKS)
def test_tremor_lies_in_8_to_12_hz_with_requested_amplitude(task):
    amplitude = 0.0003
    band_rms = _tremor_band_rms(task, amplitude)
    # Three sinusoids summing to the amplitude: RMS between amplitude/sqrt(6) and /sqrt(2).
    assert np.all((band_rms > 0.3 * amplitude) & (band_rms < 0.75 * amplitude)), band_rms
    assert np.all(_tremor_band_rms(task, 0.0) < 0.02 * amplitude)


def test_rejects_unknown_task_listing_valid_ones():
    with pytest.raises(ValueError, match="suturing, figure8"):
        VirtualSurgeon("knot_tying", 0)


@pytest.mark.parametrize("t", [-0.1, float("nan")])
def test_rejects_invalid_times(t):
    with pytest.raises(ValueError, match="t must be"):
        VirtualSurgeon("figure8", 0).sample(t)


def test_pedal_states_are_plain_bools_that_ros_messages_serialise():
    """A numpy bool in std_msgs/Bool serialises as False: the pedals must be real bools."""
    from rclpy.serialization import deserialize_message, serialize_message
    from std_msgs.msg import Bool

    surgeon = VirtualSurgeon("suturing", 1)
    clutched = [surgeon.sample(t / 100.0) for t in range(0, 2000)]
    assert any(sample.clutch for sample in clutched)
    for sample in clutched:
        for pedal in (sample.clutch, sample.operator_present):
            assert type(pedal) is bool
            wire = serialize_message(Bool(data=pedal))
            assert deserialize_message(wire, Bool).data == pedal


def test_presence_retry_presses_again_only_when_the_console_stopped_following():
    from telesurg.master.surgeon import PresenceRetry

    retry = PresenceRetry(patience_s=1.0, release_s=0.2)
    times = np.arange(0.0, 5.0, 0.01)
    # Following throughout, or clutching, or pedal up: the pedal is passed through untouched.
    assert all(retry.operator_present(t, True, False, True) for t in times)
    assert all(retry.operator_present(t, True, True, False) for t in times + 5.0)
    assert not any(retry.operator_present(t, False, False, False) for t in times + 10.0)
    assert retry.presses == 0
    # Not following with the pedal held: lift for 0.2 s after 1 s, press again, and repeat.
    pedal = [retry.operator_present(t, True, False, False) for t in times + 15.0]
    lifted = np.flatnonzero(~np.array(pedal))
    assert lifted.size > 0 and np.isclose(times[lifted[0]], 1.0, atol=0.011)
    assert 0.18 <= (lifted[lifted < 150].size * 0.01) <= 0.22
    assert retry.presses >= 2
