"""Micro-batching: concurrent requests for one model are grouped into one runtime call.

Each model has a bounded :class:`asyncio.Queue` of preprocessed images and one batcher task. The batcher takes
the first waiting image and up to ``max_batch - 1`` more — those already waiting, and, while the worker is
busy with another batch, those arriving within ``max_wait_ms`` — and hands the batch to the model's own worker
thread (the event loop never blocks on inference). Up to ``max_in_flight`` batches are handed over at once
(default 2: one running, the next waiting in the worker's queue), so the worker starts the next batch the
moment one ends instead of idling while the event loop — which competes with request handling and image
decoding for the GIL — delivers the results and forms the next batch; ``benchmarks/serve_load.py`` measured
that idle gap at over a third of the worker's time with one batch at a time. An item may also be a
zero-argument callable that returns the image: the worker thread calls it just before running the batch —
``/predict`` passes one that decodes the image there when the model is idle (one thread hand-off per request
instead of two), and one that takes the image from the decoding pool when it is busy (no event-loop hop
between decoding and inference); a callable that raises fails its own caller only. New images wait in the
queue; when it is full, :meth:`submit` refuses at once
(:class:`Overloaded` → HTTP 503 + Retry-After) rather than letting work pile up.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

from serve.threads import LeanPool

log = logging.getLogger("serve")


SHUTTING_DOWN = "server is shutting down"


class Overloaded(Exception):
    """The model's queue cannot take the request's images now."""


#: a preprocessed image, or a callable that makes one on the worker thread (and may raise for a bad image)
Item = np.ndarray | Callable[[], np.ndarray]


class MicroBatcher:
    def __init__(
        self,
        name: str,
        predict: Callable[[np.ndarray], np.ndarray],
        max_batch: int,
        max_wait_ms: float,
        queue_size: int,
        on_batch: Callable[[int, float], None] | None = None,
        on_queue_depth: Callable[[int], None] | None = None,
        max_in_flight: int = 2,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.name = name
        self.predict_fn = predict
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self._on_batch = on_batch or (lambda n, s: None)
        self._on_depth = on_queue_depth or (lambda n: None)
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        self.max_in_flight = max_in_flight
        self._slots: asyncio.Semaphore | None = None
        #: batches handed to the worker and not yet delivered → their (image, future) items
        self._in_flight: dict[asyncio.Future, list[tuple[np.ndarray, asyncio.Future]]] = {}
        self._executor = LeanPool(1, f"infer-{name}")
        #: set while the batcher waits for companions: a new image or a finished batch wakes it
        self._wake: asyncio.Future | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def idle(self) -> bool:
        """No batch is running or waiting and no image is queued: an image submitted now runs at once."""
        return not self._in_flight and (self._queue is None or self._queue.empty())

    @property
    def full(self) -> bool:
        """The queue has no room: :meth:`submit` refuses an image now."""
        return self._queue is not None and self._queue.full()

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._slots = asyncio.Semaphore(self.max_in_flight)
        self._task = asyncio.create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for run, items in list(self._in_flight.items()):
            run.cancel()
            _fail(items, Overloaded(SHUTTING_DOWN))
        self._in_flight.clear()
        if self._queue is not None:
            waiting = []
            while not self._queue.empty():
                waiting.append(self._queue.get_nowait())
            _fail(waiting, Overloaded(SHUTTING_DOWN))
        self._executor.shutdown(wait=True)  # the batches handed over were cancelled above: it skips them

    async def submit_many(self, images: Sequence[Item]) -> list[np.ndarray]:
        """Queue all images (all or none) and wait for their logits, in order.

        An image may be a callable that returns it (run on the worker thread); its exception is raised here."""
        q = self._queue
        if q is None or not self.running:
            raise Overloaded("the model's batcher is not running")
        if q.maxsize - q.qsize() < len(images):
            raise Overloaded(f"queue for model {self.name!r} is full ({q.qsize()}/{q.maxsize} images waiting)")
        loop = asyncio.get_running_loop()
        futs = []
        for x in images:  # no await in between: nobody else touches the queue meanwhile
            fut = loop.create_future()
            q.put_nowait((x, fut))
            futs.append(fut)
        self._on_depth(q.qsize())
        _wake(self._wake)
        try:
            if len(futs) == 1:  # /predict: no gathering future and callbacks for one image
                return [await futs[0]]
            return list(await asyncio.gather(*futs))
        except asyncio.CancelledError:
            for f in futs:  # the client went away: the batcher skips cancelled items
                f.cancel()
            raise

    async def submit(self, image: Item) -> np.ndarray:
        return (await self.submit_many([image]))[0]

    async def _loop(self) -> None:
        assert self._queue is not None and self._slots is not None
        q, slots = self._queue, self._slots
        loop = asyncio.get_running_loop()
        while True:
            await slots.acquire()  # at most max_in_flight batches handed to the worker
            try:
                items = await self._collect(q, loop)
            except BaseException:
                slots.release()
                raise
            self._on_depth(q.qsize())
            live = [(x, f) for x, f in items if not f.done()]
            if not live:
                slots.release()
                continue
            if any(callable(x) for x, _ in live):
                run = self._executor.run(_prepare_and_run, self.predict_fn, [x for x, _ in live])
            else:
                batch = np.stack([x for x, _ in live])
                run = self._executor.run(_timed, self.predict_fn, batch)
            self._in_flight[run] = live
            run.add_done_callback(functools.partial(self._deliver, live))

    async def _collect(self, q: asyncio.Queue, loop: asyncio.AbstractEventLoop) -> list:
        """The first waiting item, then more (up to ``max_batch`` in all): those already queued, and —
        only while the worker is busy with another batch — those arriving within ``max_wait``.

        Waiting for companions while the worker is idle would only delay the first image (a lone
        request paid the whole ``max_wait``); while it is busy the batch could not start earlier anyway.
        The wait also ends when the worker becomes free (the batch it ran has been delivered): from then
        on, waiting would only leave the worker idle.
        """
        items = [await q.get()]
        deadline = loop.time() + (self.max_wait_s if self._in_flight else 0.0)
        try:
            while len(items) < self.max_batch:
                try:
                    items.append(q.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0 or not self._in_flight:
                    break
                wake = self._wake = loop.create_future()
                timer = loop.call_later(remaining, _wake, wake)
                try:
                    await wake
                finally:
                    timer.cancel()
                    self._wake = None
        except asyncio.CancelledError:  # stopping: the images taken from the queue fail, never hang
            _fail(items, Overloaded(SHUTTING_DOWN))
            raise
        return items

    def _deliver(self, live: list[tuple[np.ndarray, asyncio.Future]], run: asyncio.Future) -> None:
        """On the event loop when a batch has run: each caller gets its row, or the batch's error."""
        self._in_flight.pop(run, None)
        if self._slots is not None:
            self._slots.release()
        _wake(self._wake)  # the worker is free: a batch still collecting companions goes now
        if run.cancelled():
            _fail(live, Overloaded(SHUTTING_DOWN))
            return
        exc = run.exception()
        if exc is not None:  # a runtime failure fails this batch, not the server
            log.error("model %s failed on a batch of %d: %s: %s", self.name, len(live), type(exc).__name__, exc)
            _fail(live, exc)
            return
        result = run.result()
        if isinstance(result, _Prepared):  # items decoded on the worker: some may have failed on their own
            for i, err in result.errors.items():
                if not live[i][1].done():
                    live[i][1].set_exception(err)
            ran = [live[i] for i in result.ok]
            if result.error is not None:
                log.error("model %s failed on a batch of %d: %s: %s", self.name, len(ran),
                          type(result.error).__name__, result.error)
                _fail(ran, result.error)
                return
            if not ran:
                return
            live, (logits, seconds) = ran, (result.logits, result.seconds)
        else:
            logits, seconds = result
        self._on_batch(len(live), seconds)
        for i, (_, f) in enumerate(live):
            if not f.done():
                f.set_result(logits[i])


def _timed(predict: Callable[[np.ndarray], np.ndarray], batch: np.ndarray) -> tuple[np.ndarray, float]:
    """Runs in the worker thread: the logits and the time the runtime took (queueing excluded)."""
    t0 = time.perf_counter()
    out = predict(batch)
    return out, time.perf_counter() - t0


class _Prepared:
    """What the worker did with a batch whose items it decoded itself."""

    __slots__ = ("ok", "errors", "logits", "seconds", "error")

    def __init__(self) -> None:
        self.ok: list[int] = []  # indices of the items that became images (their rows, in order)
        self.errors: dict[int, BaseException] = {}  # index → why the item did not become an image
        self.logits: np.ndarray | None = None
        self.seconds = 0.0
        self.error: BaseException | None = None  # the runtime's failure on the decoded images


def _prepare_and_run(predict: Callable[[np.ndarray], np.ndarray], items: list[Item]) -> _Prepared:
    """Runs in the worker thread: make each item's image (per-item errors kept), then one runtime call."""
    res, images = _Prepared(), []
    for i, item in enumerate(items):
        try:
            images.append(item() if callable(item) else item)
            res.ok.append(i)
        except Exception as exc:
            res.errors[i] = exc
    if images:
        try:
            res.logits, res.seconds = _timed(predict, np.stack(images))
        except Exception as exc:
            res.error = exc
    return res


def _wake(fut: asyncio.Future | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


def _fail(items: list[tuple[np.ndarray, asyncio.Future]], exc: BaseException) -> None:
    for _, f in items:
        if not f.done():
            f.set_exception(exc)
