"""NodeLoop and serve(): several nodes served from one thread, in this process, on a DDS domain
of the test's own: messages between them are taken and handed to their callbacks, periodic
tasks run at their rate without bursting after a stall, the parameter services are answered
(polled, not in the hot wait set), stop() ends the loop promptly, and an exception in a
callback ends it and propagates."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
import rclpy
from rcl_interfaces.srv import ListParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from std_msgs.msg import Int32
from waiting import wait_for

from telesurg.contract import topics
from telesurg.ros.loop import SERVICE_POLL_S, NodeLoop, serve
from telesurg.ros.qos import qos_profile

pytestmark = pytest.mark.multiprocess

QOS = qos_profile(topics.Qos.EVENT)  # reliable: every message counts


@pytest.fixture
def context(ros_env):
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.try_shutdown(context=context)


def in_thread(target) -> tuple[threading.Thread, list]:
    errors: list[BaseException] = []

    def run():
        try:
            target()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            errors.append(error)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_two_nodes_in_one_thread_talk_run_their_tasks_and_answer_services(context):
    talker = Node("talker", context=context)
    listener = Node("listener", context=context)
    publisher = talker.create_publisher(Int32, "/loop_test", QOS)
    heard: list[tuple[int, str]] = []
    listener.create_subscription(
        Int32, "/loop_test", lambda m: heard.append((m.data, threading.current_thread().name)),
        QOS)
    loops = [NodeLoop(talker), NodeLoop(listener)]
    ticks: list[float] = []
    loops[0].every(0.01, lambda: ticks.append(time.monotonic()))
    sent = iter(range(1000))
    loops[1].every(0.005, lambda: publisher.publish(Int32(data=next(sent))))
    thread, errors = in_thread(lambda: serve(loops))
    thread.name = "served"
    try:
        assert wait_for(lambda: len(heard) >= 50), f"heard {len(heard)}"
        # In order, none lost (reliable), each taken on the serving thread.
        numbers = [n for n, _ in heard]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        assert {name for _, name in heard} == {"served"}
        # The 100 Hz task kept its rate (generous: a loaded 2-core machine).
        recent = [b - a for a, b in itertools.pairwise(ticks[-20:])]
        assert 0.005 < sorted(recent)[len(recent) // 2] < 0.02

        # `ros2 param list` of the listener, from another context: answered by the loop.
        client_context = rclpy.Context()
        rclpy.init(context=client_context)
        try:
            client_node = Node("asker", context=client_context)
            client = client_node.create_client(ListParameters, "/listener/list_parameters")
            assert client.wait_for_service(timeout_sec=10.0)
            future = client.call_async(ListParameters.Request())
            asked = time.monotonic()
            executor = SingleThreadedExecutor(context=client_context)
            executor.add_node(client_node)
            executor.spin_until_future_complete(future, timeout_sec=10.0)
            assert future.done() and "use_sim_time" in future.result().result.names
            assert time.monotonic() - asked < 2.0 + SERVICE_POLL_S
            executor.shutdown()
            client_node.destroy_node()
        finally:
            rclpy.try_shutdown(context=client_context)

        stopping = time.monotonic()
        loops[1].stop()
        thread.join(timeout=2.0)
        assert not thread.is_alive() and time.monotonic() - stopping < 1.0
        assert not errors
    finally:
        for loop in loops:
            loop.stop()
        thread.join(timeout=2.0)
        talker.destroy_node()
        listener.destroy_node()


def test_a_late_task_skips_ahead_instead_of_bursting(context):
    node = Node("staller", context=context)
    loop = NodeLoop(node)
    calls: list[float] = []

    def task():
        calls.append(time.monotonic())
        if len(calls) == 3:
            time.sleep(0.2)  # a stall of 20 periods
        if len(calls) == 8:
            loop.stop()
    loop.every(0.01, task)
    thread, errors = in_thread(loop.run)
    thread.join(timeout=10.0)
    node.destroy_node()
    assert not errors and len(calls) == 8
    # After the stall the next call comes a period later, not 20 calls at once.
    assert all(b - a >= 0.005 for a, b in itertools.pairwise(calls[3:]))


def test_an_exception_in_a_callback_ends_the_loop_and_propagates(context):
    node = Node("failing", context=context)
    loop = NodeLoop(node)

    def fail():
        raise ValueError("broken callback")
    loop.every(0.01, fail)
    thread, errors = in_thread(loop.run)
    thread.join(timeout=10.0)
    node.destroy_node()
    assert [str(error) for error in errors] == ["broken callback"]


def test_nodes_of_different_contexts_are_refused(context):
    other = rclpy.Context()
    rclpy.init(context=other)
    try:
        first, second = Node("first", context=context), Node("second", context=other)
        with pytest.raises(ValueError, match="share one context"):
            serve([NodeLoop(first), NodeLoop(second)])
        first.destroy_node()
        second.destroy_node()
    finally:
        rclpy.try_shutdown(context=other)
    with pytest.raises(ValueError, match="positive"):
        NodeLoop(Node("zero", context=context)).every(0.0, lambda: None)


def test_refresh_serves_subscriptions_made_or_destroyed_while_served(context):
    node = Node("changing", context=context)
    publisher = node.create_publisher(Int32, "/loop_refresh", QOS)
    loop = NodeLoop(node)
    thread, errors = in_thread(loop.run)
    try:
        first: list[int] = []
        first_subscription = node.create_subscription(
            Int32, "/loop_refresh", lambda m: first.append(m.data), QOS)
        loop.refresh()
        assert wait_for(lambda: publisher.get_subscription_count() == 1)
        publisher.publish(Int32(data=1))
        assert wait_for(lambda: first == [1])
        node.destroy_subscription(first_subscription)
        second: list[int] = []
        node.create_subscription(Int32, "/loop_refresh", lambda m: second.append(m.data), QOS)
        loop.refresh()
        numbers = iter(range(2, 1000))

        def second_heard() -> bool:
            publisher.publish(Int32(data=next(numbers)))
            return bool(second)
        assert wait_for(second_heard)
        # Once the new one is served, the destroyed one hears nothing more.
        heard_before = len(first)
        assert wait_for(lambda: publisher.get_subscription_count() == 1)
        publisher.publish(Int32(data=1000))
        assert wait_for(lambda: second[-1] == 1000)
        assert len(first) == heard_before and not errors
    finally:
        loop.stop()
        thread.join(timeout=2.0)
        node.destroy_node()

