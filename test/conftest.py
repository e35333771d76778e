"""Shared test set-up: every multi-process test gets its own DDS domains, kept on localhost."""

import itertools
import os

import pytest

from telesurg.demo import session_environment

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


@pytest.fixture
def second_domain_id() -> int:
    """Another fresh DDS domain, for a second site."""
    return next(_domains)
