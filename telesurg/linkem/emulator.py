"""The demo's emulated network: one LinkRelay per link, in a process of their own, relayed by
one thread.

In the demo's own process the relay threads would wait for the interpreter lock behind the
recorders' callbacks, a few milliseconds per socket call, and hold datagrams back for tens of
milliseconds: long enough for a bridge to see a healthy link go DOWN. Here they share the lock
only with each other.

Protocol (text lines): started with one `--link NAME:PROFILE:MASTER_PORT:PATIENT_PORT:SEED` per
link, the process prints one JSON line {NAME: [port for the master bridge, port for the patient
bridge]}, then reads `down NAME` / `up NAME` lines from stdin and answers each with `ok`. It
exits when stdin closes (the demo ended, or died).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys

from telesurg.linkem.model import PROFILES

LOCALHOST = "127.0.0.1"
RELAY_NICENESS = -10


def _link(text: str) -> tuple[str, str, int, int, int]:
    try:
        name, profile, master_port, patient_port, seed = text.split(":")
        if profile not in PROFILES:
            raise ValueError
        return name, profile, int(master_port), int(patient_port), int(seed)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not NAME:PROFILE:MASTER_PORT:PATIENT_PORT:SEED with PROFILE one of "
            f"{', '.join(PROFILES)}") from None


def main(argv: list[str] | None = None) -> int:
    from telesurg.linkem.relay import LinkRelay, serve_together

    parser = argparse.ArgumentParser(prog="python -m telesurg.linkem.emulator",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--link", type=_link, action="append", required=True)
    args = parser.parse_args(argv)
    try:
        # The network is not one of the processes competing for the machine's cores: a relay
        # that waits for a core would hold datagrams back like a congested link.
        os.setpriority(os.PRIO_PROCESS, 0, RELAY_NICENESS)
    except PermissionError:
        print("emulated links: not allowed to raise priority; on a busy machine the links may "
              "show delays that a real network would not", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        relays = {}
        for name, profile, master_port, patient_port, seed in args.link:
            relays[name] = LinkRelay(
                PROFILES[profile], (LOCALHOST, 0), (LOCALHOST, 0),
                a_peer=(LOCALHOST, master_port), b_peer=(LOCALHOST, patient_port), seed=seed)
            stack.callback(relays[name].stop)
        # One thread for every link: the bridges send on all links at once.
        serve_together(list(relays.values()))
        print(json.dumps({name: [relay.a_address[1], relay.b_address[1]]
                          for name, relay in relays.items()}), flush=True)
        for line in sys.stdin:
            command, _, name = line.strip().partition(" ")
            if command not in ("down", "up") or name not in relays:
                print(f"error: expected 'down NAME' or 'up NAME' with NAME one of "
                      f"{', '.join(relays)}, got {line.strip()!r}", flush=True)
                continue
            relays[name].set_down(command == "down")
            print("ok", flush=True)
    return 0


class LinkEmulator:
    """The demo's handle on the link process: its ports, and cutting or restoring a link."""

    def __init__(self, links: list[tuple[str, str, int, int, int]], log_path):
        from telesurg.session.processes import die_with_parent

        command = [sys.executable, "-m", "telesurg.linkem.emulator"]
        for link in links:
            command += ["--link", ":".join(str(part) for part in link)]
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self._log, text=True, bufsize=1,
                                        preexec_fn=die_with_parent)
        line = self.process.stdout.readline()
        if not line:
            self.close()
            raise RuntimeError(f"the emulated links did not start (see {log_path})")
        self.ports: dict[str, list[int]] = json.loads(line)

    def set_down(self, name: str, down: bool) -> None:
        self.process.stdin.write(f"{'down' if down else 'up'} {name}\n")
        answer = self.process.stdout.readline().strip()
        if answer != "ok":
            raise RuntimeError(f"emulated link {name}: {answer or 'the link process ended'}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def __enter__(self) -> LinkEmulator:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
