"""Shared test set-up: every multi-process test gets its own DDS domains, kept on localhost.

Test tiers (markers registered in setup.cfg): `multiprocess` for a test that starts processes or
a ROS context on a DDS domain, `multiprocess` and `root` for one that needs root (network
namespaces); the fast pure tier is everything else (`make test-fast`). Collection fails if a test
takes a DDS domain fixture without the multiprocess marker, or is marked root but not
multiprocess: the fast tier stays free of processes and DDS.
"""

import itertools
import os
import sys

import pytest

from telesurg.bridge import config as bridge_config
from telesurg.contract.resources import FASTDDS_PROFILE_VARIABLE
from telesurg.session.demo import session_environment

# The venv is the ament prefix (make setup lays telesurg out in it, beside the ROS wheels):
# ament_index lookups, and the ros2 command where it is installed, search it as after
# `export AMENT_PREFIX_PATH=.venv`.
os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)

# Fast DDS refuses domain ids above 232 (UDP port arithmetic): stay within [100, 232].
_domains = itertools.cycle(range(100 + os.getpid() % 40 * 3, 233))


@pytest.fixture
def ros_env(monkeypatch):
    """Environment for node processes (and this process) on a fresh DDS domain."""
    env = session_environment(next(_domains))
    for key in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "RMW_IMPLEMENTATION",
                FASTDDS_PROFILE_VARIABLE):
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


# Fixtures that put a test on a DDS domain: only multi-process tests take them.
DDS_FIXTURES = frozenset({"ros_env", "ros_env_module", "second_domain_id"})


def pytest_collection_modifyitems(config, items):
    misplaced = []
    for item in items:
        multiprocess = item.get_closest_marker("multiprocess") is not None
        if item.get_closest_marker("root") is not None and not multiprocess:
            misplaced.append(f"{item.nodeid}: marked root but not multiprocess")
        used = DDS_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if used and not multiprocess:
            misplaced.append(f"{item.nodeid}: uses {', '.join(sorted(used))} but is not marked "
                             "multiprocess")
    if misplaced:
        raise pytest.UsageError("test tiers (see setup.cfg markers):\n  "
                                + "\n  ".join(misplaced))
