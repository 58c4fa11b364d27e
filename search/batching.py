"""Dynamic batching of model calls for an asyncio server.

Requests that arrive within ``window_ms`` of the first waiting one (up to ``max_batch``) run as one model call,
so 32 concurrent text queries cost about one forward of 32 texts instead of 32 forwards. Every model call runs
on one worker thread shared by all batchers of the app: the event loop keeps accepting requests while the
model computes, and two forwards never compete for the same cores. ``max_batch=1`` switches batching off
(the load test's baseline).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Callable, List, Optional, Sequence

__all__ = ["DynamicBatcher"]


class DynamicBatcher:
    """``await batcher.submit(x)`` -> ``fn([... x ...])[i]``; ``fn`` maps a list of payloads to a list of results."""

    def __init__(self, fn: Callable[[Sequence[Any]], Sequence[Any]], executor: concurrent.futures.Executor,
                 window_ms: float = 5.0, max_batch: int = 32) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.fn, self.executor = fn, executor
        self.window, self.max_batch = max(0.0, window_ms) / 1000.0, max_batch
        self._queue: Optional[asyncio.Queue] = None
        self._task: Optional[asyncio.Task] = None
        self.batches: List[int] = []            # sizes of the batches run (the load test reports them)

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def submit(self, payload: Any) -> Any:
        if self._queue is None:
            raise RuntimeError("DynamicBatcher.start() was not called (the app's lifespan starts it)")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((payload, future))
        return await future

    async def _collect(self) -> list:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.window
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [(p, f) for p, f in batch if not f.cancelled()]    # a client that went away
            if not live:
                continue
            self.batches.append(len(live))
            try:
                results = await loop.run_in_executor(self.executor, self.fn, [p for p, _ in live])
            except Exception as exc:  # noqa: BLE001 - the callers get the model's error, the loop goes on
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(live, results):
                if not future.done():
                    future.set_result(result)
