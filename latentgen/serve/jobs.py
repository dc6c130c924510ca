"""One worker thread runs the jobs, in order, from a bounded queue; requests wait for their job's future.

    worker = Worker(models, queue_size=16, job_timeout=300)
    job = worker.submit("txt2img", work)        # QueueFull (429) when 16 jobs already wait
    result = job.future.result()                # work(ctx) ran in the worker thread

``work(ctx)`` gets a ``Context``: ``ctx.pipeline(name, switch=...)`` (loaded in the worker, between jobs) and
``ctx.callback(i, n)``, the ``callback(done, total, latents, denoised)`` for the i-th of n pipeline calls. The
callback records progress (``Worker.progress``, A1111's ``/sdapi/v1/progress``) and stops the job by
raising: ``Interrupted`` after ``interrupt()``, ``Cancelled`` when the client went away (``job.cancel()``),
``JobTimeout`` past the per-job time limit. The pipeline calls only the public API, so stopping is an
exception out of the sampling loop; nothing else is left half done (LoRAs are unloaded in ``finally``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import datetime
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import ApiError, Cancelled, Interrupted, JobTimeout, QueueFull

log = logging.getLogger("latentgen.serve")


@dataclass
class Queued:
    kind: str  # "txt2img", "img2img", "options": A1111's state.job
    work: Callable[["Context"], object]
    timeout: float
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    interrupted: threading.Event = field(default_factory=threading.Event)
    skipped: threading.Event = field(default_factory=threading.Event)  # A1111's skip: the call running ends
    cancelled: threading.Event = field(default_factory=threading.Event)
    started: float | None = None
    task_id: str | None = None  # A1111's force_task_id: /internal/progress follows it

    def cancel(self) -> None:
        """The client is gone: skip the job if it waits, stop it at the next step if it runs."""
        self.cancelled.set()
        self.future.cancel()  # succeeds only while it waits


@dataclass
class Progress:
    """A1111's ``shared.state``, as far as ``/sdapi/v1/progress`` shows it."""

    job: str = ""
    job_count: int = 0  # pipeline calls of the job (A1111: batches, n_iter)
    job_no: int = 0  # the call running
    sampling_step: int = 0
    sampling_steps: int = 0
    job_timestamp: str = "0"
    time_start: float | None = None
    interrupted: bool = False
    skipped: bool = False
    latents: object = None  # (1, C, h, w): the first image's clean-latents estimate at the last preview step
    pipe: object = None  # the pipeline of the running job (its VAE decodes the preview)
    step_id: int = 0  # grows with every preview step: a preview is decoded once per step_id

    def state(self) -> dict:
        return {"skipped": self.skipped, "interrupted": self.interrupted, "stopping_generation": False, "job": self.job,
                "job_count": self.job_count, "job_timestamp": self.job_timestamp, "job_no": self.job_no,
                "sampling_step": self.sampling_step, "sampling_steps": self.sampling_steps}

    def fraction(self) -> tuple[float, float]:
        """(progress in [0, 1], seconds left), by A1111's formula (``modules/api/api.py``: ``progressapi``)."""
        if self.job_count == 0 or self.time_start is None:
            return 0.0, 0.0
        p = 0.01 + self.job_no / self.job_count
        if self.sampling_steps > 0:
            p += self.sampling_step / self.sampling_steps / self.job_count
        spent = time.time() - self.time_start
        return min(p, 1.0), spent / p - spent


class Context:
    """What a job's work sees: the pipelines, and the callback that reports and stops."""

    def __init__(self, worker: "Worker", job: Queued):
        self.worker, self.job = worker, job

    def pipeline(self, name: str | None = None, *, switch: bool = False):
        """The pipeline of model ``name`` (default: the current one); ``switch``: it becomes the current one."""
        self.check("before the model loaded", interrupt=False)  # an interrupt stops sampling, not loading
        models = self.worker.models
        pipe = models.switch(name) if switch else models.get(name)
        self.worker.progress.pipe = pipe
        return pipe

    def check(self, where: str = "", interrupt: bool = True) -> None:
        job = self.job
        if job.cancelled.is_set():
            raise Cancelled()
        if interrupt and job.interrupted.is_set():
            raise Interrupted()
        if job.started is not None and time.monotonic() - job.started > job.timeout:
            raise JobTimeout(job.timeout, where)

    def callback(self, i: int, n: int):
        """``callback(done, total, latents, denoised)`` for call i of n, which a skip before it no longer ends. After
        an interrupt or a skip it raises ``latentgen.Stop``: the call returns its images so far, the ones in the
        loop finished from that step's estimate (A1111's)."""
        from latentgen.request import Stop

        p, job = self.worker.progress, self.job
        p.job_count, p.job_no, p.sampling_step = n, i, 0
        job.skipped.clear()
        p.skipped = False

        every = self.worker.preview_every

        def step(done: int, total: int, latents, denoised) -> None:
            p.sampling_step, p.sampling_steps = done, total
            if every > 0 and (done % every == 0 or done == total):  # a preview's latents, every N steps: the
                p.latents, p.step_id = denoised[:1].detach().clone(), p.step_id + 1  # clean estimate, as A1111's
            self.check(f"after step {done}/{total} of call {i + 1}/{n}", interrupt=False)
            if job.interrupted.is_set() or job.skipped.is_set():
                raise Stop()

        return step


class Worker:
    """The single worker thread and its bounded queue."""

    def __init__(self, models, *, queue_size: int, job_timeout: float):
        self.models, self.queue_size, self.job_timeout = models, queue_size, job_timeout
        self.queue: queue.Queue[Queued | None] = queue.Queue(maxsize=queue_size)
        self.progress = Progress()
        self.preview_every = 0  # steps between preview latents (A1111's show_progress_every_n_steps); 0: none
        self.current: Queued | None = None
        self.finished: collections.deque[str] = collections.deque(maxlen=1024)  # task ids of the jobs that ended
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="latentgen-worker", daemon=True)
        self._thread.start()

    def submit(self, kind: str, work: Callable[[Context], object], timeout: float | None = None,
               task_id: str | None = None) -> Queued:
        """Queue a job; ``QueueFull`` when ``queue_size`` jobs already wait."""
        if self._stopping.is_set():
            raise QueueFull(0)
        job = Queued(kind, work, timeout or self.job_timeout, task_id=task_id)
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(self.queue_size) from None
        return job

    def waiting(self) -> int:
        return self.queue.qsize()

    def task(self, task_id: str) -> tuple[bool, bool, bool]:
        """(active, queued, completed) of the job submitted with ``task_id`` (A1111's ``/internal/progress``)."""
        current = self.current
        with self.queue.mutex:
            waiting = [j.task_id for j in self.queue.queue if j is not None]
        return current is not None and current.task_id == task_id, task_id in waiting, task_id in self.finished

    def interrupt(self) -> None:
        """Stop the running job at its next step (A1111's ``/sdapi/v1/interrupt``); waiting jobs still run."""
        job = self.current
        if job is not None:
            job.interrupted.set()
            self.progress.interrupted = True

    def skip(self) -> None:
        """End the running job's current call at its next step and go on with the next (A1111's
        ``/sdapi/v1/skip``: the rest of a batch count); a plot ends."""
        job = self.current
        if job is not None:
            job.skipped.set()
            self.progress.skipped = True

    def stop(self) -> None:
        """Cancel what waits, stop what runs, end the thread."""
        self._stopping.set()
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
        if self.current is not None:
            self.current.cancel()
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            job = self.queue.get()
            if job is None:
                break
            if job.cancelled.is_set() or not job.future.set_running_or_notify_cancel():
                continue  # its client left while it waited
            self._run(job)

    def _run(self, job: Queued) -> None:
        p = self.progress
        p.job, p.job_count, p.job_no, p.sampling_step, p.sampling_steps = job.kind, 1, 0, 0, 0
        p.time_start, p.interrupted, p.skipped, p.latents = time.time(), False, False, None
        p.job_timestamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        self.current, job.started = job, time.monotonic()
        try:
            job.future.set_result(job.work(Context(self, job)))
        except BaseException as e:  # noqa: BLE001 - every outcome goes to the waiting request
            if not isinstance(e, (ApiError, Cancelled, Interrupted, ValueError, TypeError, FileNotFoundError)):
                log.exception("job %s failed", job.kind)  # the trace goes to the log, never to the client
            job.future.set_exception(e)
        finally:
            if job.task_id is not None:
                self.finished.append(job.task_id)
            self.current = None
            p.job, p.job_count, p.job_no, p.sampling_step, p.sampling_steps = "", 0, 0, 0, 0
            p.latents = p.pipe = None
