"""Inference off the event loop: a few worker threads, a bounded queue, and batching of waiting requests.

The server's routes never run a model. They hand an image (or the upload's bytes with the function that
decodes them) to :meth:`InferencePool.submit`, which queues a job and awaits its result; worker threads take
jobs from the queue, decode them and call the model's :class:`~visattn.predictor.Predictor`. Decoding in the
workers keeps it off the event loop without another thread hop (each hop costs a wake-up, milliseconds on a
busy machine), and bounds how many large uploads are decoded at once to the number of workers.
Three rules keep a busy server healthy:

- **Bounded.** At most ``queue_size`` jobs wait; one more raises :class:`QueueFull` at once (the server
  answers 503 with ``Retry-After``), so a burst of requests can neither pile up without limit nor make
  everyone wait for minutes.
- **Batched.** A worker that picks a job also takes the jobs waiting behind it for the same model with the
  same options (up to ``max_batch``) and runs them as one ``predict`` call. Nothing waits to fill a batch:
  a lone request runs alone, at once; under load the batch forms from the requests that queued while the
  workers were busy, which is where batching pays (one beam search over B images costs far less than B).

- **Contained.** Jobs whose caller went away (a cancelled future) are dropped before they run. An exception
  in a job's decoding fails that job alone; one in ``predict`` fails the jobs of that batch; neither ever
  ends the worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

__all__ = ["InferencePool", "QueueFull", "PoolClosed"]

log = logging.getLogger("visattn")


class QueueFull(RuntimeError):
    """The pool's queue holds ``queue_size`` jobs already; try again in a moment."""


class PoolClosed(RuntimeError):
    """The pool is shutting down and takes no more jobs."""


@dataclass
class _Job:
    model: str
    image: Any
    decode: Callable[[Any], Any] | None
    options: dict[str, Any]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    key: tuple = field(init=False)

    def __post_init__(self) -> None:
        self.key = (self.model, tuple(sorted(self.options.items())))


def _resolve(future: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    """Set a future's outcome; runs on the future's loop (a caller that gave up has cancelled it)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _deliver(job: _Job, result: Any = None, error: BaseException | None = None) -> None:
    """Hand a job's outcome to its loop from a worker thread; a loop that has closed gets nothing."""
    try:
        job.loop.call_soon_threadsafe(_resolve, job.future, result, error)
    except RuntimeError:  # the event loop is closed: the server stopped, nobody waits any more
        pass


class InferencePool:
    """Worker threads running predictors, fed from one bounded queue.

    Args:
        predictors: model name -> a loaded :class:`~visattn.predictor.Predictor` (anything with
            ``predict(images, **options) -> list``).
        workers: threads running models; each runs one batch at a time.
        queue_size: jobs allowed to wait (not counting those running); more raise :class:`QueueFull`.
        max_batch: most images one ``predict`` call gets (1 disables batching).
    """

    def __init__(self, predictors: Mapping[str, Any], *, workers: int = 2, queue_size: int = 32,
                 max_batch: int = 8) -> None:
        for name, value in (("workers", workers), ("queue_size", queue_size), ("max_batch", max_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"InferencePool {name} must be an int >= 1, got {value!r}")
        self.predictors = dict(predictors)
        self.workers = workers
        self.queue_size = queue_size
        self.max_batch = max_batch
        self._jobs: deque[_Job] = deque()
        self._lock = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._busy = 0
        self.completed = 0  # jobs answered (results or errors), for /healthz
        self.rejected = 0  # jobs refused with QueueFull
        self.batches = 0  # predict calls made

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> InferencePool:
        """Start the worker threads (idempotent); returns ``self``."""
        with self._lock:
            if self._closed:
                raise PoolClosed("InferencePool was closed; build a new one")
            if self._threads:
                return self
            for index in range(self.workers):
                thread = threading.Thread(target=self._work, name=f"visattn-infer-{index}", daemon=True)
                thread.start()
                self._threads.append(thread)
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking jobs, fail the waiting ones with :class:`PoolClosed`, let running batches finish."""
        with self._lock:
            self._closed = True
            waiting = list(self._jobs)
            self._jobs.clear()
            self._lock.notify_all()
        for job in waiting:
            _deliver(job, error=PoolClosed("the server is shutting down"))
        for thread in self._threads:
            thread.join(timeout)

    # ------------------------------------------------------------------------------------------ state
    @property
    def queued(self) -> int:
        """Jobs waiting for a worker."""
        return len(self._jobs)

    @property
    def running(self) -> int:
        """Workers running a batch now."""
        return self._busy

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has run (``submit`` starts the pool when nobody did)."""
        return bool(self._threads)

    @property
    def alive(self) -> int:
        """Worker threads alive (== ``workers`` on a healthy pool)."""
        return sum(thread.is_alive() for thread in self._threads)

    # ------------------------------------------------------------------------------------------ jobs
    async def submit(self, model: str, image: Any, options: Mapping[str, Any] | None = None, *,
                     decode: Callable[[Any], Any] | None = None) -> Any:
        """Queue one image for ``model`` and wait for its result (one element of ``predict``'s list).

        Args:
            model: a name of ``predictors``.
            image: what ``predict`` takes, or what ``decode`` turns into it.
            options: keyword options of ``predict``; jobs batch together only with equal options.
            decode: run by the worker on ``image`` first (e.g. bytes -> PIL image); its exception is the job's.

        Raises:
            KeyError: no such model.
            QueueFull: ``queue_size`` jobs are waiting already.
            PoolClosed: the pool is shutting down.
            Exception: whatever ``predict`` raised for this job's batch.
        """
        if model not in self.predictors:
            raise KeyError(model)
        if not self._threads:
            self.start()
        loop = asyncio.get_running_loop()
        job = _Job(model, image, decode, dict(options or {}), loop.create_future(), loop)
        with self._lock:
            if self._closed:
                raise PoolClosed("the server is shutting down")
            if len(self._jobs) >= self.queue_size:
                self.rejected += 1
                raise QueueFull(f"{len(self._jobs)} requests are waiting already (queue size {self.queue_size})")
            self._jobs.append(job)
            self._lock.notify()
        return await job.future

    def _take_batch(self) -> list[_Job] | None:
        """Block until jobs wait; take the first and those behind it with the same key. None: closed."""
        with self._lock:
            while not self._jobs and not self._closed:
                self._lock.wait()
            if self._closed:
                return None
            first = self._jobs.popleft()
            batch = [first]
            if self.max_batch > 1:
                rest: deque[_Job] = deque()
                while self._jobs and len(batch) < self.max_batch:
                    job = self._jobs.popleft()
                    (batch if job.key == first.key else rest).append(job)
                rest.extend(self._jobs)  # keep the order of the jobs left behind
                self._jobs = rest
            self._busy += 1
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            finally:
                with self._lock:
                    self._busy -= 1

    def _run(self, batch: list[_Job]) -> None:
        live, images = [], []
        for job in batch:
            if job.future.cancelled():
                continue
            try:
                images.append(job.decode(job.image) if job.decode is not None else job.image)
                live.append(job)
            except Exception as error:  # noqa: BLE001 - a bad upload fails its own job only
                _deliver(job, error=error)
        if not live:
            return
        first = live[0]
        try:
            results = self.predictors[first.model].predict(images, **first.options)
            if len(results) != len(live):
                raise RuntimeError(f"predict returned {len(results)} results for {len(live)} images")
        except Exception as error:  # noqa: BLE001 - the job fails, the worker lives on
            if not isinstance(error, ValueError):
                log.exception("predict failed for model %r", first.model)
            for job in live:
                _deliver(job, error=error)
        else:
            for job, result in zip(live, results):
                _deliver(job, result)
        finally:
            with self._lock:
                self.completed += len(live)
                self.batches += 1
