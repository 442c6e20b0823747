"""Micro-batching: concurrent requests for one model are grouped into one runtime call.

Each model has a bounded :class:`asyncio.Queue` of preprocessed images and one batcher task. The
batcher takes the first waiting image, then waits at most ``max_wait_ms`` for up to ``max_batch - 1``
more, and runs the batch in the model's own worker thread (the event loop never blocks on
inference). While a batch runs, new images wait in the queue; when the queue is full, :meth:`submit`
refuses at once (:class:`Overloaded` → HTTP 503 + Retry-After) rather than letting work pile up.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger("serve")


class Overloaded(Exception):
    """The model's queue cannot take the request's images now."""


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
    ) -> None:
        self.name = name
        self.predict_fn = predict
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self._on_batch = on_batch or (lambda n, s: None)
        self._on_depth = on_queue_depth or (lambda n: None)
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._task = asyncio.create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._queue is not None:
            while not self._queue.empty():
                _, fut = self._queue.get_nowait()
                if not fut.done():
                    fut.set_exception(Overloaded("server is shutting down"))
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def submit_many(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Queue all images (all or none) and wait for their logits, in order."""
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
        try:
            return list(await asyncio.gather(*futs))
        except asyncio.CancelledError:
            for f in futs:  # the client went away: the batcher skips cancelled items
                f.cancel()
            raise

    async def submit(self, image: np.ndarray) -> np.ndarray:
        return (await self.submit_many([image]))[0]

    async def _loop(self) -> None:
        assert self._queue is not None
        q = self._queue
        loop = asyncio.get_running_loop()
        while True:
            items = [await q.get()]
            deadline = loop.time() + self.max_wait_s
            while len(items) < self.max_batch:
                try:
                    items.append(q.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(q.get(), remaining))
                except (asyncio.TimeoutError, TimeoutError):
                    break
            self._on_depth(q.qsize())
            live = [(x, f) for x, f in items if not f.done()]
            if not live:
                continue
            batch = np.stack([x for x, _ in live])
            t0 = time.perf_counter()
            try:
                logits = await loop.run_in_executor(self._executor, self.predict_fn, batch)
            except asyncio.CancelledError:
                for _, f in live:
                    if not f.done():
                        f.set_exception(Overloaded("server is shutting down"))
                raise
            except Exception as exc:  # a runtime failure fails this batch, not the server
                log.error("model %s failed on a batch of %d: %s: %s", self.name, len(live), type(exc).__name__, exc)
                for _, f in live:
                    if not f.done():
                        f.set_exception(exc)
                continue
            self._on_batch(len(live), time.perf_counter() - t0)
            for i, (_, f) in enumerate(live):
                if not f.done():
                    f.set_result(logits[i])
