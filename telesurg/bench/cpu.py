"""cpu: what a default `telesurg demo` costs the machine at master device rates of 250, 500 and
1000 Hz, so that the cost of rate is a curve, not a guess.

Each point is a `telesurg demo` (suturing, seed 1, lan links, recording on, no report) of
DURATION_S seconds in a process of its own, with the configuration's `virtual_surgeon` and
`master_console` `rate_hz` set to the rate (the device's samples and the console's commands).
The rates run interleaved (250 500 1000 250 ...) for ROUNDS rounds so that the machine's drift
hits them alike. Figures per rate: CPU per process and in total (% of one core, summed over every
process of the session, median over the rounds); the command rate while following against the
device's; commands lost; the command age (the console's stamp to the command's arrival at the
patient site) p50 and p99, and the largest command gap while following (worst round); link down
events and pauses (summed).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from telesurg.bench import Result, Row
from telesurg.session.demo import default_config

RATES_HZ = (250.0, 500.0, 1000.0)
ROUNDS = 2
DURATION_S = 15.0
#: The nodes whose rate_hz is the master device's.
DEVICE_RATE_NODES = ("virtual_surgeon", "master_console")
#: Targets of the default session (issue 15), checked at the default device rate.
DEFAULT_RATE_HZ = 250.0
CPU_TARGET_PERCENT = 100.0
RATE_TARGET_FRACTION = 0.98  # of the device rate: no device sample lost
AGE_P99_TARGET_MS = 5.0
GAP_TARGET_MS = 20.0


def config_at_rate(rate_hz: float, folder: Path) -> Path:
    """A copy of the default configuration with the master device at rate_hz."""
    config = yaml.safe_load(default_config().read_text())
    for node in DEVICE_RATE_NODES:
        config[node]["ros__parameters"]["rate_hz"] = rate_hz
    path = folder / f"telesurg_{rate_hz:g}hz.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_demo_at(rate_hz: float, folder: Path, round_index: int) -> dict:
    """One `telesurg demo` at rate_hz in its own process: its summary."""
    out = folder / f"{rate_hz:g}hz_{round_index}"
    command = [sys.executable, "-m", "telesurg.cli", "demo", "--out", str(out), "--no-report",
               "--duration", f"{DURATION_S:g}", "--config", str(config_at_rate(rate_hz, folder))]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"telesurg demo at {rate_hz:g} Hz failed ({done.returncode}): "
                           f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return json.loads((out / "summary.json").read_text())


def figures_at(rate_hz: float, summaries: list[dict]) -> dict:
    """One rate's figures over its rounds' summaries."""
    processes = sorted({name for summary in summaries for name in summary["cpu_percent"]})
    return {
        "rate_hz": rate_hz,
        "cpu_total_percent": statistics.median(
            sum(summary["cpu_percent"].values()) for summary in summaries),
        "cpu_percent": {name: statistics.median(summary["cpu_percent"].get(name, 0.0)
                                                for summary in summaries)
                        for name in processes},
        "command_rate_hz": min(summary["command_rate_hz"] for summary in summaries),
        "commands_lost": sum(summary["commands_lost"] for summary in summaries),
        "command_age_ms": {
            "p50": statistics.median(summary["command_age_ms"]["p50"] for summary in summaries),
            "p99": max(summary["command_age_ms"]["p99"] for summary in summaries)},
        "command_gap_ms_max": max(summary["command_gap_ms_max"] for summary in summaries),
        "down_events": sum(link["down_events"] for summary in summaries
                           for link in summary["links"].values()),
        "pauses": sum(summary["pauses"] for summary in summaries),
    }


def _rows(point: dict) -> list[Row]:
    rate = point["rate_hz"]
    variant = f"device {rate:g} Hz"
    checked = rate == DEFAULT_RATE_HZ  # the targets are the default session's

    def target(text: str, met: bool) -> dict:
        return {"target": text, "met": met} if checked else {}

    age = point["command_age_ms"]
    per_process = ", ".join(f"{name} {value:g}" for name, value in point["cpu_percent"].items())
    return [
        Row(variant, "CPU, sum over the session's processes (% of one core)",
            f"{point['cpu_total_percent']:.1f} %",
            **target(f"<= {CPU_TARGET_PERCENT:g} %",
                     point["cpu_total_percent"] <= CPU_TARGET_PERCENT)),
        Row(variant, "CPU per process (%)", per_process),
        Row(variant, "commands per second while following (lowest round)",
            f"{point['command_rate_hz']:g} Hz, {point['commands_lost']} lost",
            **target(f">= {RATE_TARGET_FRACTION * rate:g} Hz, 0 lost",
                     point["command_rate_hz"] >= RATE_TARGET_FRACTION * rate
                     and point["commands_lost"] == 0)),
        Row(variant, "command age p50 / p99 (worst round)",
            f"{age['p50']:.2f} / {age['p99']:.2f} ms",
            **target(f"p99 <= {AGE_P99_TARGET_MS:g} ms", age["p99"] <= AGE_P99_TARGET_MS)),
        Row(variant, "largest command gap while following (worst round)",
            f"{point['command_gap_ms_max']:.1f} ms",
            **target(f"<= {GAP_TARGET_MS:g} ms", point["command_gap_ms_max"] <= GAP_TARGET_MS)),
        Row(variant, "link down events, pauses (all rounds)",
            f"{point['down_events']}, {point['pauses']}",
            **target("0, 0", point["down_events"] == 0 and point["pauses"] == 0)),
    ]


def run(rates_hz: tuple[float, ...] = RATES_HZ, rounds: int = ROUNDS) -> Result:
    summaries: dict[float, list[dict]] = {rate: [] for rate in rates_hz}
    with tempfile.TemporaryDirectory(prefix="telesurg-bench-cpu-") as folder:
        for round_index in range(rounds):
            for rate in rates_hz:
                print(f"  round {round_index + 1}: device at {rate:g} Hz", flush=True)
                summaries[rate].append(run_demo_at(rate, Path(folder), round_index))
    points = [figures_at(rate, summaries[rate]) for rate in rates_hz]
    notes = [
        f"{rounds} rounds of `telesurg demo --duration {DURATION_S:g}` (suturing, seed 1, lan "
        "links, recording on) per device rate, interleaved; the configuration's virtual_surgeon "
        "and master_console rate_hz set to the rate. CPU: median over the rounds of each "
        "process's CPU time over the task; command age: the console's stamp to the command's "
        "arrival at the patient site. The machine's own speed drifts from hour to hour (the "
        "same session has measured 81-112 % here): compare rates within one run.",
    ]
    return Result("cpu", {f"{point['rate_hz']:g}hz": point for point in points},
                  [row for point in points for row in _rows(point)], notes=notes)
