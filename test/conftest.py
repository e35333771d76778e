"""Shared test set-up: every multi-process test gets its own DDS domains, kept on localhost."""

import itertools
import os

import pytest

from telesurg.bridge import config as bridge_config
from telesurg.session.demo import session_environment

# Fast DDS refuses domain ids above 232 (UDP port arithmetic): stay within [100, 232].
_domains = itertools.cycle(range(100 + os.getpid() % 40 * 3, 233))


@pytest.fixture
def ros_env(monkeypatch):
    """Environment for node processes (and this process) on a fresh DDS domain."""
    env = session_environment(next(_domains))
    for key in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "RMW_IMPLEMENTATION",
                "FASTDDS_DEFAULT_PROFILES_FILE"):
        monkeypatch.setenv(key, env[key])
    return env


@pytest.fixture(scope="module")
def ros_env_module():
    """Environment for node processes on a fresh DDS domain, shared by a module's tests (this
    process's own environment untouched)."""
    return session_environment(next(_domains))


@pytest.fixture
def second_domain_id() -> int:
    """Another fresh DDS domain, for a second site."""
    return next(_domains)


@pytest.fixture
def free_udp_ports():
    """free_udp_ports(n): n UDP ports on 127.0.0.1 that were free a moment ago."""
    return bridge_config.free_udp_ports


@pytest.fixture
def write_bridge_config():
    """write_bridge_config(folder, links, key_file): see write_loopback_bridge_config."""
    return bridge_config.write_loopback_bridge_config


def direct_links(ports):
    """Two links straight from bridge to bridge: ports are (master a, patient a, master b,
    patient b)."""
    return [((ports[0], ports[1]), (ports[1], ports[0])),
            ((ports[2], ports[3]), (ports[3], ports[2]))]


@pytest.fixture
def direct_bridge_config(tmp_path, free_udp_ports):
    """(config path, ports) for two bridges joined directly on loopback by links a and b."""
    ports = free_udp_ports(4)
    return bridge_config.write_loopback_bridge_config(tmp_path, direct_links(ports)), ports
