"""The demo's link process: relays each link between the two bridge ports, cut on command."""

import socket

import pytest

from telesurg.linkem.emulator import LinkEmulator

# Tier (setup.cfg markers): the link emulator runs as its own process.
pytestmark = pytest.mark.multiprocess


def udp_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    return sock


def test_links_relay_both_ways_and_a_cut_link_carries_nothing(tmp_path):
    ends = {name: (udp_socket(), udp_socket()) for name in ("a", "b")}
    spec = [(name, "perfect", master.getsockname()[1], patient.getsockname()[1], i)
            for i, (name, (master, patient)) in enumerate(ends.items())]
    try:
        with LinkEmulator(spec, tmp_path / "links.log") as links:
            for name, (master, patient) in ends.items():
                to_master, to_patient = links.ports[name]
                master.sendto(b"command " + name.encode(), ("127.0.0.1", to_master))
                assert patient.recv(100) == b"command " + name.encode()
                patient.sendto(b"state", ("127.0.0.1", to_patient))
                assert master.recv(100) == b"state"
            links.set_down("a", True)
            master_a, patient_a = ends["a"]
            master_a.sendto(b"lost", ("127.0.0.1", links.ports["a"][0]))
            master_b, patient_b = ends["b"]
            master_b.sendto(b"carried", ("127.0.0.1", links.ports["b"][0]))
            assert patient_b.recv(100) == b"carried"
            patient_a.settimeout(0.3)
            with pytest.raises(TimeoutError):
                patient_a.recv(100)
            links.set_down("a", False)
            master_a.sendto(b"back", ("127.0.0.1", links.ports["a"][0]))
            patient_a.settimeout(2.0)
            assert patient_a.recv(100) == b"back"
            with pytest.raises(RuntimeError, match="NAME one of a, b"):
                links.set_down("c", True)
        assert links.process.returncode == 0  # closing stdin ended it
    finally:
        for pair in ends.values():
            for sock in pair:
                sock.close()


def test_a_link_process_that_cannot_start_says_where_to_look(tmp_path):
    with pytest.raises(RuntimeError, match="links.log"):
        LinkEmulator([("a", "no_such_profile", 1, 2, 0)], tmp_path / "links.log")
    assert "no_such_profile" in (tmp_path / "links.log").read_text()
