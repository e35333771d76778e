"""The bridge logic without ROS: two BridgeCores on loopback, in this process."""

import socket
import threading
import time

import pytest

from telesurg.bridge_config import load_bridge_config
from telesurg.bridge_core import BridgeCore
from telesurg.wire import MessageKind, WireCodec, max_payload_bytes, write_key


def wait_for(condition, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return False


@pytest.fixture
def cores(tmp_path, direct_bridge_config):
    key = write_key(tmp_path / "bridge.key")
    path, ports = direct_bridge_config
    delivered = []
    master = BridgeCore(load_bridge_config(path, "master"), key, lambda *_: None,
                        lambda _: None)
    patient = BridgeCore(load_bridge_config(path, "patient"), key,
                         lambda index, payload: delivered.append((index, payload)),
                         lambda _: None)
    master.start()
    patient.start()
    stop = threading.Event()

    def heartbeats():
        while not stop.is_set():
            master.send_heartbeat()
            patient.send_heartbeat()
            stop.wait(0.01)

    beating = threading.Thread(target=heartbeats, daemon=True)
    beating.start()
    yield master, patient, delivered, key, ports
    stop.set()
    beating.join()
    master.close()
    patient.close()


def test_every_message_is_delivered_once_though_sent_on_both_links(cores):
    master, patient, delivered, _, _ = cores
    payloads = [bytes([i % 256]) * (20 + i % 100) for i in range(300)]
    for payload in payloads:
        assert master.send(0, payload)
    assert wait_for(lambda: len(delivered) == len(payloads)
                    and patient.duplicates_discarded == len(payloads))
    assert delivered == [(0, payload) for payload in payloads]
    assert patient.drops.total == 0


def test_heartbeats_bring_both_links_up_with_a_round_trip_time(cores):
    master, patient, _, _, _ = cores
    assert wait_for(lambda: str(patient.snapshot().state) == "REDUNDANT"
                    and all(f.rtt_ms is not None for f in master.snapshot().links.values()))
    for figures in master.snapshot().links.values():
        assert 0.0 < figures.rtt_ms < 100.0  # loopback: well under a millisecond when idle


def test_a_message_too_large_for_one_datagram_is_refused_and_counted(cores):
    master, _, _, _, _ = cores
    assert not master.send(0, bytes(max_payload_bytes() + 1))
    assert master.oversized == 1 and master.sent == 0


def test_an_authentic_datagram_on_the_wrong_link_is_dropped(cores):
    _, patient, delivered, key, ports = cores
    forger = WireCodec(key)  # holds the key, claims link b, arrives on link a's socket
    datagram = forger.encode(MessageKind.DATA, 1, 1, time.monotonic_ns(), 0, b"payload")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(datagram, ("127.0.0.1", ports[1]))
    assert wait_for(lambda: patient.drops.snapshot().get("wrong link") == 1)
    assert delivered == []


def test_lost_is_declared_on_time_after_the_last_datagram(tmp_path, direct_bridge_config):
    key = write_key(tmp_path / "bridge.key")
    path, _ = direct_bridge_config
    config = load_bridge_config(path, "patient")
    lost_at = []

    def on_change(changes):
        if any(change.link is None and str(change.current) == "LOST" for change in changes):
            lost_at.append(time.monotonic())

    master = BridgeCore(load_bridge_config(path, "master"), key, lambda *_: None,
                        lambda _: None)
    patient = BridgeCore(config, key, lambda *_: None, on_change)
    master.start()
    patient.start()
    try:
        for _ in range(30):
            master.send_heartbeat()
            time.sleep(0.01)
        assert str(patient.snapshot().state) == "REDUNDANT"
        master.send_heartbeat()  # the last datagram: then both links fall silent
        last_sent = time.monotonic()
        assert wait_for(lambda: lost_at, 2.0)
    finally:
        master.close()
        patient.close()
    reaction_ms = (lost_at[0] - last_sent) * 1000.0
    print(f"LOST {reaction_ms:.1f} ms after the last datagram "
          f"(link timeout {config.link_timeout_ms:.0f} ms)")
    # Design: LOST within link_timeout_ms + 5 ms. Asserted with room for a loaded machine.
    assert config.link_timeout_ms - 1.0 <= reaction_ms <= config.link_timeout_ms + 50.0
