"""`telesurg bench`: telesurg measured side by side with what it is compared to, on this machine,
in one run (`make bench` runs them all).

Each benchmark is a module of this package with a `run() -> Result`. It runs its compared
variants interleaved (A B A B ...) so that the machine's drift hits all of them alike, reports
medians and tails over several rounds (never a single run), and stays bounded in time: the
whole suite well under 10 minutes on 2 cores.
"""

from __future__ import annotations

import importlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Benchmark name -> (module of this package, what it measures), in the order `make bench` runs
#: them.
BENCHMARKS = {
    "overhead": ("telesurg.bench.overhead", "bridge-added latency over raw UDP"),
    "throughput": ("telesurg.bench.throughput", "highest sustained command rate per bridge"),
    "failover": ("telesurg.bench.failover",
                 "one of two links lost mid-stream, dual link against single link"),
    "flood": ("telesurg.bench.flood", "forged datagrams on both links while commands flow"),
    "freeze": ("telesurg.bench.freeze", "all links cut (network namespaces) to arm held"),
    "end_to_end": ("telesurg.bench.end_to_end", "master device to joint command"),
    "cpu": ("telesurg.bench.cpu",
            "a default demo's CPU per process and command path at device rates of 250, 500 "
            "and 1000 Hz"),
    "zenoh": ("telesurg.bench.zenoh_link", "Eclipse Zenoh on the same emulated links and outage"),
    "video": ("telesurg.bench.video",
              "the endoscope video pipeline (render, encode, FEC, paced links, reassemble, "
              "decode), commands through two bridges with video on and off, and "
              "motion-to-photon"),
    "console": ("telesurg.bench.console",
                "the console page in headless Chromium: capture to display, key press to the "
                "arm's motion on the page"),
}
RESULTS_PATH = Path("bench/results.json")


@dataclass
class Row:
    """One line of the printed table: a figure of one variant, and its target if it has one."""

    variant: str
    figure: str
    value: str
    target: str = ""
    met: bool | None = None  # None: no target


@dataclass
class Result:
    """What a benchmark measured: figures under stable keys (results.json), the table rows,
    and the command that reproduces it."""

    name: str
    figures: dict
    rows: list[Row] = field(default_factory=list)
    command: str = ""
    notes: list[str] = field(default_factory=list)


def run_benchmark(name: str) -> Result:
    module = importlib.import_module(BENCHMARKS[name][0])
    started = time.monotonic()
    result = module.run()
    result.figures["elapsed_s"] = round(time.monotonic() - started, 1)
    result.command = result.command or f"telesurg bench {name}"
    return result


def markdown_table(results: list[Result]) -> str:
    lines = ["| benchmark | variant | figure | value | target | command |",
             "|---|---|---|---|---|---|"]
    for result in results:
        for row in result.rows:
            target = row.target if row.met is None else (
                f"{row.target} {'met' if row.met else '**missed**'}")
            lines.append(f"| {result.name} | {row.variant} | {row.figure} | {row.value} | "
                         f"{target} | `{result.command}` |")
    notes = [f"- {result.name}: {note}" for result in results for note in result.notes]
    return "\n".join(lines + ([""] + notes if notes else []))


def machine() -> str:
    import os

    return (f"{platform.system()} {platform.release()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}")


def write_results(results: list[Result], path: Path = RESULTS_PATH) -> None:
    """Merge the results into results.json (a benchmark run alone replaces only its key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = json.loads(path.read_text()) if path.exists() else {}
    stored.update({result.name: {**result.figures, "command": result.command}
                   for result in results})
    stored["machine"] = machine()
    stored["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    path.write_text(json.dumps(stored, indent=2) + "\n")


def run_bench(names: list[str], results_path: Path = RESULTS_PATH) -> int:
    """`telesurg bench NAME ...` (or all): run, print the table, write results.json."""
    chosen = list(BENCHMARKS) if not names or names == ["all"] else names
    results = []
    for name in chosen:
        print(f"benchmark {name} ...", flush=True)
        results.append(run_benchmark(name))
        print(markdown_table(results[-1:]), flush=True)
    print(f"\n{time.strftime('%Y-%m-%d')}, {machine()}\n")
    print(markdown_table(results))
    write_results(results, results_path)
    print(f"\nfigures written to {results_path}")
    return 0
