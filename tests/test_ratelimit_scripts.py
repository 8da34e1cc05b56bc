"""The rate limits' Lua scripts run by SHA-1 on the real Redis, and still run on a Redis
that has forgotten them (a restart or ``SCRIPT FLUSH``)."""

from __future__ import annotations

import pytest

from config import ratelimit


@pytest.fixture
def client():  # type: ignore[no-untyped-def]
    client = ratelimit._redis_client("probe")
    assert client is not None, "the tests run on the Redis cache"
    return client


def test_a_window_counts_by_sha_and_again_after_redis_forgot_its_script(client) -> None:  # type: ignore[no-untyped-def]
    window = ratelimit.Window("script-test", limit=10, seconds=60)
    client.script_flush()
    assert window.hit("a") == 1  # NOSCRIPT: sent once as text, which caches it
    assert client.script_exists(ratelimit._HIT.sha) == [True]
    assert window.hit("a") == 2  # by SHA
    client.script_flush()
    assert window.hit("a") == 3
    assert window.hit("b") == 1


def test_the_rolling_limit_refuses_at_its_limit_after_redis_forgot_its_script(client) -> None:  # type: ignore[no-untyped-def]
    limit = ratelimit.RollingLimit("script-test")
    client.script_flush()
    granted = [limit.hit("t", [("rpm", 3, 1)]) for _ in range(4)]
    assert [outcome is None for outcome in granted] == [True, True, True, False]


def test_a_connection_redis_closed_is_replaced_and_the_event_counted_once(client) -> None:  # type: ignore[no-untyped-def]
    window = ratelimit.Window("script-test-reconnect", limit=10, seconds=60)
    assert window.hit("a") == 1
    connection = ratelimit._thread_connections.get(client)
    assert connection._sock is not None  # this thread's own, kept open
    assert window.hit("a") == 2
    assert ratelimit._thread_connections.get(client) is connection
    # Redis drops every other client (as a restart does): the next hit reconnects.
    assert client.client_kill_filter(_type="normal", skipme=True) >= 1
    assert window.hit("a") == 3
    assert int(client.get(ratelimit.cache.make_key(window._key("a")[0]))) == 3


def test_each_thread_counts_on_a_connection_of_its_own(client) -> None:  # type: ignore[no-untyped-def]
    import threading

    window = ratelimit.Window("script-test-threads", limit=1000, seconds=60)
    connections: list[object] = []

    def hits() -> None:
        for _ in range(50):
            window.hit("shared")
        connections.append(ratelimit._thread_connections.get(client))

    threads = [threading.Thread(target=hits) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(c) for c in connections}) == 4
    assert window.hit("shared") == 201


def test_a_forked_child_counts_on_a_connection_of_its_own(client) -> None:  # type: ignore[no-untyped-def]
    import os

    window = ratelimit.Window("script-test-fork", limit=1000, seconds=60)
    assert window.hit("a") == 1
    parents = ratelimit._thread_connections.get(client)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child reports through the pipe)
        try:
            count = window.hit("a")
            fresh = ratelimit._thread_connections.get(client) is not parents
            os.write(write, f"{count} {fresh}".encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    assert os.read(read, 100).decode() == "2 True"
    os.close(read)
    assert ratelimit._thread_connections.get(client) is parents
    assert window.hit("a") == 3  # the parent's connection still works
