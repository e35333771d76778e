"""The telesurg command line: help lists the commands, keygen writes a private key once."""

import stat

from telesurg.bridge.wire import load_key
from telesurg.cli import main


def test_help_lists_every_command(capsys):
    try:
        main(["--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "keygen" in out


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
    try:
        main(["--help"])
    except SystemExit:
        pass
    assert "linkem" in capsys.readouterr().out
    assert main(["linkem", "--profile", "nope", "--a", "127.0.0.1:0", "--b",
                 "127.0.0.1:0"]) == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err


def test_demo_refuses_a_malformed_or_unknown_outage_naming_it(capsys):
    for bad, says in (("a@5", "not LINK@START+DURATION"), ("c@1+1", "unknown link 'c'")):
        try:
            code = main(["demo", "--outage", bad, "--duration", "1", "--out", "/nonexistent"])
        except SystemExit as exit_:
            code = exit_.code
        assert code in (1, 2)
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
