"""Work queues of the service: micro-batched forward passes and a bounded pool of image decoders."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from cifarlab.serve.limits import (
    DECODE_QUEUE,
    DECODE_WORKERS,
    MAX_BATCH,
    MAX_WAIT_MS,
    Overloaded,
)


class MicroBatcher:
    """Collects single images from concurrent requests into batches for one model function."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], max_batch: int = MAX_BATCH, max_wait_ms: float = MAX_WAIT_MS):
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.requests = self.batches = self.largest_batch = 0

    def start(self) -> None:
        """Start collecting on the running event loop (again after a stop: one app may be served twice)."""
        # One thread: forward passes run one after another, each using torch's own threads.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cifarlab-model")
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.executor:
            self.executor.shutdown(wait=True)

    @property
    def _started_queue(self) -> asyncio.Queue:
        """The queue start() made: a batcher takes requests only between start and stop."""
        assert self.queue is not None, "MicroBatcher used before start()"
        return self.queue

    async def submit(self, image: torch.Tensor) -> torch.Tensor:
        """The model's output row for one image, computed in a batch with whatever else is queued."""
        future = asyncio.get_running_loop().create_future()
        await self._started_queue.put((image, future))
        return await future

    def _drain(self, items: list) -> None:
        while len(items) < self.max_batch:
            try:
                items.append(self._started_queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    async def _collect(self) -> list:
        """The next batch: what is queued once one request arrived, after `max_wait` for more."""
        items = [await self._started_queue.get()]
        self._drain(items)
        if len(items) < self.max_batch and self.max_wait > 0:
            await asyncio.sleep(self.max_wait)  # let requests arriving together join in
            self._drain(items)
        return [(image, future) for image, future in items if not future.done()]  # drop cancelled ones

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            if not items:
                continue
            try:
                out = await loop.run_in_executor(self.executor, self.fn, torch.stack([image for image, _ in items]))
            except Exception as e:
                for _, future in items:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.requests += len(items)
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(items))
            for (_, future), row in zip(items, out):
                if not future.done():
                    future.set_result(row)

    def stats(self) -> dict:
        return {
            "requests": self.requests,
            "batches": self.batches,
            "mean_batch": self.requests / self.batches if self.batches else 0.0,
            "largest_batch": self.largest_batch,
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait * 1000,
        }


class DecodePool:
    """Decodes uploads on a few threads and refuses work beyond a bounded queue.

    Unbounded, 40 concurrent 4096x4096 uploads took the service from 0.3 to 2.6 GB and a normal
    request to 6.6 s. Now at most `workers` images are decoded at once and `queue` more wait
    (their compressed bytes only); anything beyond is refused with Overloaded (503).
    """

    def __init__(self, decode: Callable[[bytes], object], workers: int = DECODE_WORKERS, queue: int = DECODE_QUEUE):
        self.decode, self.workers, self.capacity = decode, workers, workers + queue
        self.executor: ThreadPoolExecutor | None = None
        # Admitted on the event loop, released on a decode thread when its work is really done.
        self.lock = threading.Lock()
        self.pending = self.refused = 0

    def start(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="cifarlab-decode")

    def stop(self) -> None:
        if self.executor:
            self.executor.shutdown(wait=True)

    async def __call__(self, data: bytes):
        with self.lock:
            if self.pending >= self.capacity:
                self.refused += 1
                raise Overloaded
            self.pending += 1
        assert self.executor is not None, "DecodePool used before start()"
        job = self.executor.submit(self.decode, data)
        # Counted until its thread finishes, even when the request is gone: a client that
        # disconnects does not free the memory its decode is using.
        job.add_done_callback(self._release)
        return await asyncio.wrap_future(job)

    def _release(self, _job) -> None:
        with self.lock:
            self.pending -= 1

    def stats(self) -> dict:
        return {"decode_pending": self.pending, "decode_capacity": self.capacity, "decode_refused": self.refused}
