"""Waiting in tests for something another thread or process does: polled, bounded, never a
bare sleep."""

import time


def wait_for(condition, timeout_s: float = 10.0) -> bool:
    """True as soon as condition() is, False once timeout_s has passed without it."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True
