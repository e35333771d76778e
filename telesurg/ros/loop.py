"""A node served from one thread, without an rclpy executor.

rclpy's executors rebuild their wait set, make a task and a coroutine for every message, and
spin timers through the same machinery: on this project's 2-core machines that cost 0.4-0.5 ms
of CPU per message received, most of a session's CPU. NodeLoop does what a telesurg node needs
and no more, in the one thread that calls run():

- every message of the node's subscriptions is taken straight from the middleware (as rclpy's
  executor would, with the subscription's raw setting) and handed to its callback;
- every request to the node's services (the parameter services `ros2 param` uses) is answered;
- periodic work registered with every() runs at its rate on the same thread, after the messages
  that were waiting (a late task skips ahead rather than bursting).

After each wake-up everything ready is taken, so messages that arrive together cost one wake-up.
run() returns when the context shuts down (Ctrl-C and SIGTERM do that through rclpy's signal
handler, which also wakes the loop) or stop() is called; an exception in a callback or a task
ends it and propagates.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node
from rclpy.signals import SignalHandlerGuardCondition

#: Longest wait with nothing due: how late a stop() or a shutdown can be noticed at worst.
MAX_WAIT_S = 0.1


@dataclass
class _Periodic:
    period_s: float
    callback: Callable[[], None]
    next_s: float


class NodeLoop:
    def __init__(self, node: Node):
        self.node = node
        self._tasks: list[_Periodic] = []
        self._stop = threading.Event()
        self._wake = node.create_guard_condition(lambda: None)

    def every(self, period_s: float, callback: Callable[[], None]) -> None:
        """Call callback every period_s seconds, from the loop's thread."""
        if not period_s > 0.0:
            raise ValueError(f"period must be positive, got {period_s!r}")
        self._tasks.append(_Periodic(period_s, callback, time.monotonic() + period_s))

    def stop(self) -> None:
        """Make run() return soon (from any thread)."""
        self._stop.set()
        with contextlib.suppress(Exception):  # already destroyed at shutdown
            self._wake.trigger()

    def run(self) -> None:
        node, context = self.node, self.node.context
        subscriptions = list(node.subscriptions)
        services = list(node.services)
        sigint = SignalHandlerGuardCondition(context)
        guards = [self._wake, sigint]
        try:
            with contextlib.ExitStack() as handles:
                for entity in (*subscriptions, *services, *guards):
                    handles.enter_context(entity.handle)
                handles.enter_context(context.handle)
                wait_set = _rclpy.WaitSet(len(subscriptions), len(guards), 0, 0,
                                          len(services), 0, context.handle)
                while context.ok() and not self._stop.is_set():
                    wait_set.clear_entities()
                    for subscription in subscriptions:
                        wait_set.add_subscription(subscription.handle)
                    for service in services:
                        wait_set.add_service(service.handle)
                    for guard in guards:
                        wait_set.add_guard_condition(guard.handle)
                    wait_set.wait(int(self._wait_s() * 1e9))
                    if not context.ok() or self._stop.is_set():
                        break
                    ready = set(wait_set.get_ready_entities("subscription"))
                    for subscription in subscriptions:
                        if subscription.handle.pointer in ready:
                            _take_messages(subscription)
                    ready = set(wait_set.get_ready_entities("service"))
                    for service in services:
                        if service.handle.pointer in ready:
                            _answer_requests(service)
                    self._run_due_tasks()
        finally:
            sigint.destroy()

    def _wait_s(self) -> float:
        if not self._tasks:
            return MAX_WAIT_S
        due = min(task.next_s for task in self._tasks) - time.monotonic()
        return min(MAX_WAIT_S, max(0.0, due))

    def _run_due_tasks(self) -> None:
        now = time.monotonic()
        for task in self._tasks:
            if now >= task.next_s:
                task.callback()
                task.next_s += task.period_s
                if task.next_s < now:  # fell behind (a stall): skip ahead, no burst
                    task.next_s = now + task.period_s


def _take_messages(subscription) -> None:
    handle, message_type, raw = subscription.handle, subscription.msg_type, subscription.raw
    while (taken := handle.take_message(message_type, raw)) is not None:
        subscription.callback(taken[0])


def _answer_requests(service) -> None:
    request_type, response_type = service.srv_type.Request, service.srv_type.Response
    while True:
        request, header = service.handle.service_take_request(request_type)
        if header is None:
            return
        service.send_response(service.callback(request, response_type()), header)
