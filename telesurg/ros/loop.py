"""A node served from one thread, without an rclpy executor.

rclpy's executors rebuild their wait set, make a task and a coroutine for every message, and
spin timers through the same machinery: on this project's 2-core machines that cost 0.4-0.5 ms
of CPU per message received, most of a session's CPU. NodeLoop does what a telesurg node needs
and no more, in the one thread that calls run() (or serve(), for several nodes in one process):

- every message of the node's subscriptions is taken straight from the middleware (as rclpy's
  executor would, with the subscription's raw setting) and handed to its callback;
- every request to the node's services (the parameter services `ros2 param` uses) is answered,
  within SERVICE_POLL_S;
- periodic work registered with every() runs at its rate on the same thread, after the messages
  that were waiting (a late task skips ahead rather than bursting).

After each wake-up everything ready is taken, so messages that arrive together cost one wake-up.
run() returns when the context shuts down (Ctrl-C and SIGTERM do that through rclpy's signal
handler; the loop sees it within MAX_WAIT_S) or stop() is called; an exception in a callback or
a task ends it and propagates.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node

#: Longest wait with nothing due: how late a stop() or a shutdown can be noticed at worst.
MAX_WAIT_S = 0.1
#: How often the nodes' services (the parameter services `ros2 param` uses) are answered.
SERVICE_POLL_S = 0.05


@dataclass
class _Periodic:
    period_s: float
    callback: Callable[[], None]
    next_s: float


class NodeLoop:
    """A node's subscriptions, services and periodic tasks, served by run() (this node alone)
    or by serve() together with other nodes' loops in one thread (a composed process)."""

    def __init__(self, node: Node):
        self.node = node
        self.tasks: list[_Periodic] = []
        self._stop = threading.Event()
        self._changed = threading.Event()
        self._wake = node.create_guard_condition(lambda: None)

    def every(self, period_s: float, callback: Callable[[], None]) -> None:
        """Call callback every period_s seconds, from the loop's thread."""
        if not period_s > 0.0:
            raise ValueError(f"period must be positive, got {period_s!r}")
        self.tasks.append(_Periodic(period_s, callback, time.monotonic() + period_s))

    def stop(self) -> None:
        """Make run() (or the serve() that serves this loop) return soon, from any thread."""
        self._stop.set()
        with contextlib.suppress(Exception):  # already destroyed at shutdown
            self._wake.trigger()

    def refresh(self) -> None:
        """Serve the node's subscriptions, services and tasks as they are now (call after
        creating or destroying some while it is served, from any thread)."""
        self._changed.set()
        with contextlib.suppress(Exception):
            self._wake.trigger()

    def run(self) -> None:
        serve([self])


def serve(loops: list[NodeLoop]) -> None:
    """Serve the nodes of loops (one context) from the calling thread, until the context shuts
    down or one of the loops is stopped: one wait set over all their subscriptions and wake-ups,
    every task at its rate, requests to their services every SERVICE_POLL_S. Nodes in one
    process and thread pay one wake-up for what arrives together, and a message between them
    never leaves the process."""
    context = loops[0].node.context
    if any(loop.node.context is not context for loop in loops):
        raise ValueError("the nodes served together must share one context")
    # No guard condition of rclpy's signal handler here: its thread triggers those while the
    # process tears down, and destroying one meanwhile crashed node processes at shutdown
    # (SIGSEGV, seen three times in fresh-clone test runs). The shutdown it makes is seen
    # within MAX_WAIT_S.
    while _serve_until_changed(loops, context):
        for loop in loops:
            loop._changed.clear()


def _serve_until_changed(loops: list[NodeLoop], context) -> bool:
    """Serve the loops' entities as they are now; True when one of them changed (refresh),
    False when the context shut down or a loop was stopped."""
    subscriptions = [s for loop in loops for s in loop.node.subscriptions]
    services = [s for loop in loops for s in loop.node.services]
    guards = [loop._wake for loop in loops]
    stop_events = [loop._stop for loop in loops]
    changed = [loop._changed for loop in loops]
    # What a ready subscription needs, looked up once: rclpy's handle properties cost a call.
    takers = {s.handle.pointer: (s.handle, s.msg_type, s.raw, s.callback) for s in subscriptions}
    subscription_handles = [s.handle for s in subscriptions]
    guard_handles = [guard.handle for guard in guards]
    with contextlib.ExitStack() as handles:
        # Held while served: a subscription destroyed meanwhile goes once it is released.
        for entity in (*subscriptions, *services, *guards):
            handles.enter_context(entity.handle)
        handles.enter_context(context.handle)
        wait_set = _rclpy.WaitSet(len(subscriptions), len(guards), 0, 0, 0, 0, context.handle)
        tasks = [task for loop in loops for task in loop.tasks]
        if services:
            tasks.append(_service_poll(services, context))
        while True:
            wait_set.clear_entities()
            for handle in subscription_handles:
                wait_set.add_subscription(handle)
            for handle in guard_handles:
                wait_set.add_guard_condition(handle)
            wait_set.wait(int(_wait_s(tasks) * 1e9))
            if not context.ok() or any(stop.is_set() for stop in stop_events):
                return False
            if any(event.is_set() for event in changed):
                return True
            for pointer in wait_set.get_ready_entities("subscription"):
                handle, message_type, raw, callback = takers[pointer]
                while (taken := handle.take_message(message_type, raw)) is not None:
                    callback(taken[0])
            _run_due_tasks(tasks)


def _service_poll(services, context) -> _Periodic:
    """A task that answers every waiting request to the services. Services are not in the
    main wait set: rmw_fastrtps's wait costs about 3 us per service per wake-up, and a node has
    six (its parameter services), while requests come seldom and may wait SERVICE_POLL_S."""
    wait_set = _rclpy.WaitSet(0, 0, 0, 0, len(services), 0, context.handle)

    def answer_waiting_requests() -> None:
        wait_set.clear_entities()
        for service in services:
            wait_set.add_service(service.handle)
        wait_set.wait(0)
        ready = set(wait_set.get_ready_entities("service"))
        for service in services:
            if service.handle.pointer in ready:
                _answer_requests(service)
    return _Periodic(SERVICE_POLL_S, answer_waiting_requests, time.monotonic())


def _wait_s(tasks: list[_Periodic]) -> float:
    if not tasks:
        return MAX_WAIT_S
    due = min(task.next_s for task in tasks) - time.monotonic()
    return min(MAX_WAIT_S, max(0.0, due))


def _run_due_tasks(tasks: list[_Periodic]) -> None:
    now = time.monotonic()
    for task in tasks:
        if now >= task.next_s:
            task.callback()
            task.next_s += task.period_s
            if task.next_s < now:  # fell behind (a stall): skip ahead, no burst
                task.next_s = now + task.period_s


def _answer_requests(service) -> None:
    request_type, response_type = service.srv_type.Request, service.srv_type.Response
    while True:
        request, header = service.handle.service_take_request(request_type)
        if header is None:
            return
        service.send_response(service.callback(request, response_type()), header)
