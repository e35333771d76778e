"""Shared test set-up: every multi-process test gets its own DDS domain, kept on localhost."""

import itertools
import os

import pytest

from telesurg.demo import session_environment

_domains = itertools.count(100 + os.getpid() % 50 * 2)


@pytest.fixture
def ros_env(monkeypatch):
    """Environment for node processes (and this process) on a fresh DDS domain."""
    env = session_environment(next(_domains))
    for key in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "RMW_IMPLEMENTATION",
                "FASTDDS_DEFAULT_PROFILES_FILE"):
        monkeypatch.setenv(key, env[key])
    return env
