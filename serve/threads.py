"""A lean thread pool for the event loop's per-request hand-offs.

``loop.run_in_executor`` with a :class:`concurrent.futures.ThreadPoolExecutor` builds a
``concurrent.futures.Future`` (a Condition and its lock), checks the pool's idle semaphore and chains the
result to an asyncio future through two callbacks. For ``/predict``, which hands every image to a
decoding thread and every batch to the model's thread, that bookkeeping was a measurable share of the
event loop's time (benchmarks/RESULTS.md, section 3a). Here a job
is a tuple on a :class:`queue.SimpleQueue` and its result goes straight to an asyncio future with
``call_soon_threadsafe``.

:meth:`LeanPool.submit` hands a job's result to another *thread* instead (a :class:`ThreadResult`): ``/predict``
under load decodes an image on the pool and the model's inference thread takes the decoded image straight
from it, so the event loop is not woken between decoding and inference (section 3a).
"""
from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any


def _resolve(fut: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if fut.done():  # cancelled meanwhile (the client went away, or the server is stopping)
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class ThreadResult:
    """The result of a job submitted with :meth:`LeanPool.submit`, for a thread to wait on (not the event loop).

    A plain lock held until the job is done is the cheapest wait there is (no Condition, no callbacks)."""

    __slots__ = ("_done", "_value", "_error")

    def __init__(self) -> None:
        self._done = threading.Lock()
        self._done.acquire()
        self._value: Any = None
        self._error: BaseException | None = None

    def _set(self, value: Any, error: BaseException | None) -> None:
        self._value, self._error = value, error
        self._done.release()

    def result(self) -> Any:
        """Wait for the job; its return value, or its exception raised here (every call raises it again)."""
        with self._done:  # acquired once the job has released it; released again for later calls
            pass
        if self._error is not None:
            raise self._error
        return self._value


class LeanPool:
    """``threads`` daemon threads running jobs for an asyncio event loop; :meth:`run` returns an asyncio future."""

    def __init__(self, threads: int, name: str) -> None:
        if threads < 1:
            raise ValueError("a pool needs at least one thread")
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True) for i in range(threads)]
        self._closed = False
        for t in self._threads:
            t.start()

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Run ``fn(*args)`` on a pool thread; its result or exception arrives in the returned future."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.run_threadsafe(loop, fut, fn, *args)
        return fut

    def run_threadsafe(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future, fn: Callable[..., Any],
                       *args: Any) -> None:
        """:meth:`run` from any thread: ``fut`` (created on ``loop``'s thread) gets ``fn(*args)``'s result.

        ``/predict`` uses it from the model's inference thread: an image decoded there has its out-of-distribution
        statistics computed here while the model runs (RESULTS.md 3a)."""
        if self._closed:
            raise RuntimeError("the pool is shut down")
        self._jobs.put((loop, fut, fn, args))

    def submit(self, fn: Callable[..., Any], *args: Any) -> ThreadResult:
        """Run ``fn(*args)`` on a pool thread for another thread to collect (:meth:`ThreadResult.result`).

        Every submitted job runs, also after :meth:`shutdown` was called (so nobody waits forever)."""
        if self._closed:
            raise RuntimeError("the pool is shut down")
        res = ThreadResult()
        self._jobs.put((None, res, fn, args))
        return res

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            loop, fut, fn, args = job
            if loop is not None and fut.done():  # cancelled before it started: skip it
                continue
            try:
                result, exc = fn(*args), None
            except BaseException as e:  # delivered to the caller, like run_in_executor
                result, exc = None, e
            if loop is None:  # a ThreadResult: its waiting thread takes it
                fut._set(result, exc)
                del job, fut, result, exc
                continue
            try:
                loop.call_soon_threadsafe(_resolve, fut, result, exc)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass
            del job, fut, result, exc

    def shutdown(self, wait: bool = True) -> None:
        """Stop the threads after the jobs already queued (cancelled ones are skipped); ``wait``: join them."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        if wait:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join()
