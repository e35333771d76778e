"""The telesurg command line: help lists the commands, keygen writes a private key once."""

import argparse
import re
import stat

import pytest

from telesurg.bridge.wire import load_key
from telesurg.cli import build_parser, main


def subcommands() -> list[str]:
    """Every subcommand the parser has, in its order."""
    (action,) = [action for action in build_parser()._actions
                 if isinstance(action, argparse._SubParsersAction)]
    return list(action.choices)


def help_text(argv: list[str], capsys) -> str:
    """What `telesurg ARGV` prints, having checked that it exits with status 0."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_command(capsys):
    names = subcommands()
    assert {"demo", "keygen", "linkem", "state", "status"} <= set(names)
    out = help_text(["--help"], capsys)
    assert out.startswith("usage: telesurg ")
    # argparse lists each subcommand indented by 4 (under COMMAND), its help beside it or, if the
    # name is long, on the next line (indented further).
    assert re.findall(r"^ {4}(\S+)", out, re.MULTILINE) == names


@pytest.mark.parametrize("name", subcommands())
def test_every_command_has_help_naming_it(capsys, name):
    out = help_text([name, "--help"], capsys)
    assert out.startswith(f"usage: telesurg {name} ")


def test_keygen_writes_a_private_key_and_never_silently_replaces_it(tmp_path, capsys):
    path = tmp_path / "site" / "bridge.key"
    assert main(["keygen", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_key(path)
    assert len(key) == 32
    assert main(["keygen", str(path)]) == 2
    assert "exists" in capsys.readouterr().err
    assert load_key(path) == key
    assert main(["keygen", "--force", str(path)]) == 0
    assert load_key(path) != key


def test_linkem_is_listed_and_hands_its_arguments_to_the_relay(capsys):
    assert re.search(r"^ {4}linkem ", help_text(["--help"], capsys), re.MULTILINE)
    assert "--profile PROFILE" in help_text(["linkem", "--help"], capsys)  # the relay's help
    assert main(["linkem", "--profile", "nope", "--a", "127.0.0.1:0", "--b",
                 "127.0.0.1:0"]) == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err


def test_demo_refuses_a_malformed_or_unknown_outage_naming_it(capsys):
    """Both are usage errors (status 2, before anything starts): a malformed outage, and one of
    a link the session does not have (which used to exit 1 from inside the demo)."""
    for outage, says in (("a@5", "not LINK@START+DURATION"), ("c@1+1", "unknown link 'c'")):
        with pytest.raises(SystemExit) as exit_:
            main(["demo", "--outage", outage, "--duration", "1", "--out", "/nonexistent"])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err


def test_a_session_whose_arm_faulted_prints_its_figures_and_fails(monkeypatch, capsys,
                                                                   tmp_path):
    """The figures of a run whose arm went to FAULT are written and printed, and the exit code
    and a last line say that it faulted (it used to exit 0, never naming the FAULT)."""
    from telesurg.session import demo

    summary = {"faults": [{"t_s": 6.2, "cause": "arm joint states stopped"}]}
    monkeypatch.setattr(demo, "run_demo", lambda options: summary)
    monkeypatch.setattr("telesurg.analysis.summary.print_summary",
                        lambda figures: print("figures"))
    assert main(["demo", "--out", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("figures")
    assert err.strip() == (
        "telesurg demo: failed: the arm went to FAULT at 6.2 s (arm joint states stopped) and "
        f"stayed out of teleoperation until a person clears it; see the [safety_supervisor] "
        f"lines in {tmp_path / 'logs' / 'patient'}")
