"""telesurg bench cpu: the configuration it runs each rate with, and its figures over rounds."""

import yaml

from telesurg.bench import cpu
from telesurg.session.demo import default_config


def _summary(total_split, rate_hz, age_p99, gap, down=0, pauses=0, lost=0):
    return {
        "cpu_percent": dict(zip(("master/site_container", "patient/arm_controller"),
                                total_split, strict=True)),
        "command_rate_hz": rate_hz, "commands_lost": lost,
        "command_age_ms": {"p50": age_p99 / 4, "p99": age_p99},
        "command_gap_ms_max": gap,
        "links": {"a": {"down_events": down}, "b": {"down_events": 0}},
        "pauses": pauses,
    }


def test_config_at_rate_sets_the_device_rate_and_keeps_everything_else(tmp_path):
    default = yaml.safe_load(default_config().read_text())
    changed = yaml.safe_load(cpu.config_at_rate(1000.0, tmp_path).read_text())
    for node in cpu.DEVICE_RATE_NODES:
        assert default[node]["ros__parameters"]["rate_hz"] != 1000.0
        assert changed[node]["ros__parameters"]["rate_hz"] == 1000.0
        changed[node]["ros__parameters"]["rate_hz"] = default[node]["ros__parameters"]["rate_hz"]
    assert changed == default


def test_figures_take_the_median_cost_and_the_worst_timing_over_rounds():
    summaries = [_summary((30.0, 20.0), 249.0, 2.0, 9.0),
                 _summary((40.0, 30.0), 247.5, 4.5, 25.0, down=1),
                 _summary((35.0, 10.0), 249.5, 3.0, 12.0, pauses=2, lost=3)]
    point = cpu.figures_at(250.0, summaries)
    assert point["cpu_total_percent"] == 50.0  # of 50, 70, 45
    assert point["cpu_percent"] == {"master/site_container": 35.0,
                                    "patient/arm_controller": 20.0}
    assert point["command_rate_hz"] == 247.5
    assert point["command_age_ms"]["p99"] == 4.5
    assert point["command_gap_ms_max"] == 25.0
    assert (point["down_events"], point["pauses"], point["commands_lost"]) == (1, 2, 3)


def test_only_the_default_rate_is_held_to_the_targets():
    within = _summary((40.0, 30.0), 249.0, 2.0, 9.0)
    rows_default = cpu._rows(cpu.figures_at(cpu.DEFAULT_RATE_HZ, [within]))
    assert [row.met for row in rows_default if row.met is not None] == [True] * 5
    over = _summary((80.0, 50.0), 240.0, 6.0, 30.0, down=1)
    assert not any(row.met for row in cpu._rows(cpu.figures_at(cpu.DEFAULT_RATE_HZ, [over]))
                   if row.met is not None)
    assert all(row.met is None for row in cpu._rows(cpu.figures_at(1000.0, [over])))
