"""serve.threads.LeanPool: results reach asyncio futures (run) and other threads (submit), errors included."""
from __future__ import annotations

import asyncio
import threading

import pytest

from serve.threads import LeanPool


def test_run_delivers_results_and_errors_to_the_event_loop() -> None:
    pool = LeanPool(2, "t")

    async def go() -> tuple[int, str]:
        ok = await pool.run(lambda a, b: a + b, 2, 3)
        with pytest.raises(ValueError, match="bad image"):
            await pool.run(_raise, ValueError("bad image"))
        return ok, threading.current_thread().name

    try:
        assert asyncio.run(go()) == (5, "MainThread")
    finally:
        pool.shutdown()


def _raise(exc: BaseException) -> None:
    raise exc


def test_submit_hands_the_result_to_the_thread_that_waits_for_it() -> None:
    pool = LeanPool(1, "t")
    gate = threading.Event()
    try:
        pending = pool.submit(lambda: (gate.wait(5), threading.current_thread().name)[1])
        failed = pool.submit(_raise, KeyError("corrupt"))
        got: list[object] = []
        waiter = threading.Thread(target=lambda: got.append(pending.result()))
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive() and not got  # the job has not finished: the waiting thread blocks
        gate.set()
        waiter.join(5)
        assert got == ["t_0"]
        assert pending.result() == "t_0"  # a second call returns it again
        for _ in range(2):  # and an error is raised on every call, with its own type
            with pytest.raises(KeyError, match="corrupt"):
                failed.result()
    finally:
        pool.shutdown()


def test_jobs_submitted_before_shutdown_still_run_and_later_ones_are_refused() -> None:
    pool = LeanPool(1, "t")
    gate = threading.Event()
    first = pool.submit(gate.wait, 5)
    second = pool.submit(lambda: "ran")
    pool.shutdown(wait=False)
    gate.set()
    assert first.result() is True and second.result() == "ran"  # nobody is left waiting forever
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: None)


def test_run_threadsafe_delivers_to_the_loop_a_job_started_from_another_thread() -> None:
    pool = LeanPool(1, "t")

    async def go() -> tuple[str, type]:
        loop = asyncio.get_running_loop()
        ok, bad = loop.create_future(), loop.create_future()
        starter = threading.Thread(target=lambda: (pool.run_threadsafe(loop, ok, lambda: threading.current_thread().name),
                                                   pool.run_threadsafe(loop, bad, _raise, OSError("stats"))))
        starter.start()
        starter.join(5)
        with pytest.raises(OSError, match="stats") as err:
            await bad
        return await ok, err.type

    try:
        assert asyncio.run(go()) == ("t_0", OSError)
    finally:
        pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.run_threadsafe(None, None, print)  # type: ignore[arg-type]
