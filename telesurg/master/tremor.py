"""Physiological-tremor filter for master positions: a low-delay 8-12 Hz band-stop.

A low-pass that removes 8-12 Hz tremor delays slow, deliberate motion by tens of ms. A band-stop
leaves both sides of the band alone; its delay below 2 Hz comes mostly from how sharply the
attenuation starts above the passband (Bode gain-phase relation), so an elliptic design (the
sharpest edges for a given order) with only the attenuation needed (20 dB) keeps it near 13 ms.

The recursion runs on plain floats: at 1 kHz a per-sample scipy call or small-array numpy
arithmetic costs more than the filter itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal

MIN_RATE_HZ = 200.0
MAX_RATE_HZ = 2000.0
TREMOR_BAND_HZ = (8.0, 12.0)
# Edges just outside the tremor band: the elliptic stopband then covers 8-12 Hz.
_PASSBAND_EDGES_HZ = (7.8, 12.3)
_ORDER = 4  # 8th-order band-stop, four second-order sections
_PASSBAND_RIPPLE_DB = 0.7
# 20.7 dB below the peak passband gain is 20 dB below the unity DC gain (see design_sections).
_STOPBAND_ATTENUATION_DB = 20.7
VOLUNTARY_BAND_HZ = 2.0  # deliberate surgical motion lies below this


@dataclass(frozen=True)
class FilterFigures:
    """The design's measured response at one sample rate."""

    rate_hz: float
    tremor_min_attenuation_db: float  # weakest attenuation within 8-12 Hz
    voluntary_max_gain_change_db: float  # largest |gain| in dB below 2 Hz
    voluntary_max_delay_ms: float  # largest phase or group delay below 2 Hz
    sections: int


def _check_rate(rate_hz: float) -> None:
    if not MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ:
        raise ValueError(f"rate_hz must be in [{MIN_RATE_HZ}, {MAX_RATE_HZ}], got {rate_hz}")


def design_sections(rate_hz: float) -> np.ndarray:
    """Second-order sections (n x 6, scipy layout) of the band-stop, with DC gain exactly 1.

    An even-order elliptic filter sits at -ripple dB at DC; rescaling to unity keeps the
    filtered position equal to the hand position when the hand is still.
    """
    _check_rate(rate_hz)
    sections = signal.ellip(_ORDER, _PASSBAND_RIPPLE_DB, _STOPBAND_ATTENUATION_DB,
                            _PASSBAND_EDGES_HZ, btype="bandstop", output="sos", fs=rate_hz)
    dc_gain = np.prod(sections[:, :3].sum(axis=1) / sections[:, 3:].sum(axis=1))
    sections[0, :3] /= dc_gain
    return sections


def design_figures(rate_hz: float) -> FilterFigures:
    """Attenuation in the tremor band, gain change and delay below 2 Hz, from the design."""
    sections = design_sections(rate_hz)
    tremor_hz = np.linspace(*TREMOR_BAND_HZ, 401)
    _, tremor_response = signal.sosfreqz(sections, worN=tremor_hz, fs=rate_hz)
    voluntary_hz = np.linspace(0.01, VOLUNTARY_BAND_HZ, 400)
    _, voluntary_response = signal.sosfreqz(sections, worN=voluntary_hz, fs=rate_hz)
    phase = np.unwrap(np.angle(voluntary_response))
    angular = 2.0 * np.pi * voluntary_hz
    phase_delay = -phase / angular
    group_delay = -np.gradient(phase, angular)
    return FilterFigures(
        rate_hz=rate_hz,
        tremor_min_attenuation_db=float(-20.0 * np.log10(np.abs(tremor_response).max())),
        voluntary_max_gain_change_db=float(
            np.abs(20.0 * np.log10(np.abs(voluntary_response))).max()),
        voluntary_max_delay_ms=float(1e3 * max(phase_delay.max(), group_delay.max())),
        sections=len(sections),
    )


class TremorFilter:
    """Band-stop tremor filter for a 3-D position sampled at rate_hz.

    Until reset() is called, the first step() starts the filter in steady state at that sample,
    so the output never jumps from zero.
    """

    def __init__(self, rate_hz: float) -> None:
        sections = design_sections(rate_hz)
        # (b0, b1, b2, a1, a2) per section; a0 is 1 in scipy's layout.
        self._coefficients = [tuple(map(float, row[[0, 1, 2, 4, 5]])) for row in sections]
        self._section_dc_gains = [float(row[:3].sum() / row[3:].sum()) for row in sections]
        self._states: list[list[list[float]]] | None = None  # [channel][section] -> [z1, z2]
        self.rate_hz = float(rate_hz)

    def reset(self, x0) -> None:
        """Put every section in the steady state of a constant input x0 (output == x0)."""
        self._states = []
        for value in np.asarray(x0, dtype=float).reshape(3).tolist():
            channel = []
            for (b0, _, b2, _, a2), dc_gain in zip(self._coefficients, self._section_dc_gains,
                                                   strict=True):
                output = dc_gain * value
                # Transposed direct form II fixed point for a constant input.
                channel.append([output - b0 * value, b2 * value - a2 * output])
                value = output
            self._states.append(channel)

    def step(self, x) -> np.ndarray:
        """Filter one sample (3 values); returns the filtered 3-vector."""
        values = np.asarray(x, dtype=float).reshape(3).tolist()
        if self._states is None:
            self.reset(values)
        filtered = []
        for value, channel in zip(values, self._states, strict=True):
            for (b0, b1, b2, a1, a2), state in zip(self._coefficients, channel, strict=True):
                output = b0 * value + state[0]
                state[0] = b1 * value - a1 * output + state[1]
                state[1] = b2 * value - a2 * output
                value = output
            filtered.append(value)
        return np.array(filtered)
