"""The Triton clients an entry script creates, under a gevent worker: enough connections,
and a fair queue for them (``triton_score.azureml.clients``)."""

from __future__ import annotations

from typing import Any

import gevent
import gevent.lock
import pytest
import tritonclient.http as httpclient

from triton_score.azureml.clients import adapt_script_clients, make_pool_fair
from triton_score.triton.pool import FairSemaphore


def queue_up(semaphore: object, names: list[str], order: list[str]) -> list[gevent.Greenlet]:
    """One greenlet per name, each waiting for ``semaphore``, recording when it gets it."""

    def take(name: str) -> None:
        semaphore.acquire()
        order.append(name)
        gevent.sleep(0)
        semaphore.release()

    greenlets = [gevent.spawn(take, name) for name in names]
    gevent.sleep(0)  # they all run up to their acquire() and wait
    return greenlets


def test_geventhttpclients_own_semaphore_lets_a_newcomer_jump_the_queue() -> None:
    """The cause: a released slot is free until the waiter runs, and anyone may take it."""
    semaphore = gevent.lock.BoundedSemaphore(1)
    semaphore.acquire()
    order: list[str] = []
    greenlets = queue_up(semaphore, ["waited"], order)
    semaphore.release()
    assert semaphore.acquire(blocking=False)  # the newcomer wins
    semaphore.release()
    gevent.joinall(greenlets, timeout=5)
    assert order == ["waited"]


def test_fair_semaphore_serves_waiters_first_come_first_served() -> None:
    semaphore = FairSemaphore(1)
    assert semaphore.acquire()
    order: list[str] = []
    greenlets = queue_up(semaphore, ["first", "second", "third"], order)
    assert semaphore.waiting == 3
    semaphore.release()  # handed to "first" before it even runs
    assert not semaphore.acquire(blocking=False)  # so a newcomer cannot take it
    gevent.joinall(greenlets, timeout=5)
    assert order == ["first", "second", "third"]
    assert semaphore.acquire(blocking=False) and not semaphore.acquire(blocking=False)


def test_fair_semaphore_loses_no_slot_to_timeouts_or_kills() -> None:
    semaphore = FairSemaphore(1)
    assert semaphore.acquire()
    assert semaphore.acquire(timeout=0.01) is False and semaphore.waiting == 0
    with pytest.raises(gevent.Timeout), gevent.Timeout(0.01):
        semaphore.acquire()
    assert semaphore.waiting == 0

    # Killed after the slot was handed over but before it ran: the slot goes on.
    order: list[str] = []
    killed, patient = queue_up(semaphore, ["killed", "patient"], order)
    killed.kill(block=False)  # scheduled first: it runs before "killed" learns of its turn
    semaphore.release()
    gevent.joinall([patient], timeout=5)
    assert order == ["patient"]
    assert semaphore.acquire(blocking=False)


@pytest.fixture
def adapted(monkeypatch: pytest.MonkeyPatch) -> None:
    """``adapt_script_clients(7)``, undone after the test."""
    monkeypatch.setattr(
        httpclient.InferenceServerClient, "__init__", httpclient.InferenceServerClient.__init__
    )
    adapt_script_clients(3)
    adapt_script_clients(7)  # idempotent: the second call only changes the default


def pool_of(client: httpclient.InferenceServerClient) -> Any:
    return client._client_stub._connection_pool


def test_a_scripts_client_gets_the_workers_connections_and_a_fair_pool(adapted: None) -> None:
    import tritonhttpclient  # the old name AzureML-Triton scripts import

    for client in (
        tritonhttpclient.InferenceServerClient(url="localhost:8000"),
        httpclient.InferenceServerClient("localhost:8000", verbose=False),
    ):
        assert pool_of(client).size == 7
        assert isinstance(pool_of(client)._semaphore, FairSemaphore)
        client.close()


def test_a_concurrency_the_script_asks_for_is_kept(adapted: None) -> None:
    by_keyword = httpclient.InferenceServerClient("localhost:8000", concurrency=2)
    by_position = httpclient.InferenceServerClient("localhost:8000", False, 1)
    assert pool_of(by_keyword).size == 2
    assert pool_of(by_position).size == 1
    assert isinstance(pool_of(by_position)._semaphore, FairSemaphore)
    by_keyword.close()
    by_position.close()


def test_geventhttpclient_still_has_the_pool_we_adapt() -> None:
    """If an upgrade changes the pool's layout, this fails (and the adaptation is skipped)."""
    client = httpclient.InferenceServerClient("localhost:8000")
    assert isinstance(pool_of(client)._semaphore, gevent.lock.Semaphore)
    assert make_pool_fair(client)
    assert isinstance(pool_of(client)._semaphore, FairSemaphore)
    client.close()
