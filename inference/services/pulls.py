"""Pulls the server runs for the console: each downloads on a thread of its own, its progress is
sent to the console's WebSocket group, and once in place the model is discovered in-process.

The jobs are touched on the event loop only: the download thread hands its progress over with
`call_soon_threadsafe`, and cancelling sets an event the thread checks between chunks. A pull
lives as long as the server process (the list is not kept across restarts; a `.part` is, and
pulling the same URL and name again resumes it).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from channels.layers import get_channel_layer

from inference.config import get_config
from inference.errors import InvalidRequest
from inference.pulling import (
    PullCancelled,
    PulledModel,
    PullError,
    PullPlan,
    PullProgress,
    human_bytes,
    plan_pull,
    pull,
)
from inference.services.models import config_reload

logger = logging.getLogger(__name__)

PULL_GROUP = "model-pulls"
_FINISHED_KEPT = 20  # finished pulls the page still shows


class PullState(enum.Enum):
    CONNECTING = "connecting"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    DISCOVERING = "discovering"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (PullState.DONE, PullState.FAILED, PullState.CANCELLED)


@dataclass
class PullJob:
    plan: PullPlan
    started_by: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: PullState = PullState.CONNECTING
    progress: PullProgress | None = None
    message: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)
    followers: set[asyncio.Event] = field(default_factory=set)  # set at each change (see `PullJobs.follow`)

    def snapshot(self) -> dict[str, Any]:
        """What the page shows of this pull (JSON)."""
        progress = self.progress
        return {
            "id": self.id,
            "name": self.plan.name,
            "url": self.plan.shown_url,
            "started_by": self.started_by,
            "state": self.state.value,
            "finished": self.state.finished,
            "message": self.message,
            "received": progress.received if progress else 0,
            "total": progress.total if progress else None,
            "bytes_per_second": round(progress.bytes_per_second) if progress else 0,
            "eta_seconds": round(progress.eta_seconds) if progress and progress.eta_seconds is not None else None,
        }


class PullJobs:
    """The process's pulls, running and recently finished, in the order they started."""

    def __init__(self) -> None:
        self._jobs: dict[str, PullJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def snapshot(self) -> list[dict[str, Any]]:
        return [job.snapshot() for job in self._jobs.values()]

    def start(self, *, url: str, name: str | None, sha256: str | None, started_by: str) -> PullJob:
        """Start a pull in the background (on the event loop); raises PullError for what is
        wrong before it starts, or if the same model is being pulled already."""
        config = get_config().model_manager
        plan = plan_pull(
            url=url, directory=config.models_directory, name=name, sha256=sha256, max_mb=config.max_pull_mb
        )
        if any(job.plan.name == plan.name and not job.state.finished for job in self._jobs.values()):
            raise PullError(f"{plan.name} is being pulled already")
        job = PullJob(plan=plan, started_by=started_by)
        self._jobs[job.id] = job
        self._forget_old()
        self._spawn(self._run(job))
        logger.info("pull of %s from %s started by %s", plan.name, plan.shown_url, started_by)
        return job

    def cancel(self, job_id: str) -> bool:
        """Ask a running pull to stop (it removes its partial download); False if there is none."""
        job = self._jobs.get(job_id)
        if job is None or job.state.finished:
            return False
        job.cancel.set()
        return True

    async def follow(self, job: PullJob) -> AsyncIterator[dict[str, Any]]:
        """The pull's snapshots: now, and after each change until it has finished (the latest
        only, for a follower slower than the changes). Leaving does not stop the pull."""
        changed = asyncio.Event()
        job.followers.add(changed)
        try:
            while True:
                yield job.snapshot()
                if job.state.finished:
                    return
                await changed.wait()
                changed.clear()
        finally:
            job.followers.discard(changed)

    async def _run(self, job: PullJob) -> None:
        try:
            pulled = await self._download(job)
            self._set(job, PullState.DISCOVERING, f"{human_bytes(pulled.size_bytes)} in place, rediscovering")
            self._set(job, PullState.DONE, await self._discover(job))
        except PullCancelled as exc:
            self._set(job, PullState.CANCELLED, str(exc))
        except PullError as exc:
            self._set(job, PullState.FAILED, str(exc))
        except Exception as exc:  # a surprise must still end the pull on the page
            logger.exception("pull of %s failed", job.plan.name)
            self._set(job, PullState.FAILED, f"{type(exc).__name__}: {exc}")
        logger.info("pull of %s %s: %s", job.plan.name, job.state.value, job.message)

    async def _download(self, job: PullJob) -> PulledModel:
        """`pull()` on a thread of its own: a download holds its thread for minutes, which the
        loop's default executor needs for short work. A daemon thread, so that a server
        stopping mid-pull does not wait for it (the `.part` stays, to be resumed)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[PulledModel] = loop.create_future()

        def report(outcome: Callable[[], object]) -> None:
            try:
                loop.call_soon_threadsafe(outcome)
            except RuntimeError:
                pass  # the loop is closed: the server stopped mid-pull

        def download() -> None:
            try:
                pulled = pull(
                    job.plan,
                    cancel=job.cancel,
                    on_progress=lambda progress: report(functools.partial(self._progressed, job, progress)),
                )
            except BaseException as exc:  # handed over to the loop, where the job ends
                report(functools.partial(_settle, done, error=exc))
            else:
                report(functools.partial(_settle, done, result=pulled))

        threading.Thread(target=download, name=f"pull {job.plan.name}", daemon=True).start()
        try:
            return await done
        except asyncio.CancelledError:
            job.cancel.set()
            raise

    async def _discover(self, job: PullJob) -> str:
        try:
            changes = await config_reload()
        except InvalidRequest as exc:  # config.json broke meanwhile; the model is still served by name
            return f"downloaded, but {exc}"
        if job.plan.name in changes["added"] + changes["changed"]:
            return f"{job.plan.name} is now listed in /v1/models"
        return f"downloaded; {job.plan.name} is in the models directory"

    def _progressed(self, job: PullJob, progress: PullProgress) -> None:
        job.progress = progress
        if not job.state.finished and job.state is not PullState.DISCOVERING:
            self._set(job, PullState(progress.phase.value), job.message)

    def _set(self, job: PullJob, state: PullState, message: str) -> None:
        job.state, job.message = state, message
        for changed in job.followers:
            changed.set()
        layer = get_channel_layer()
        if layer is not None:
            self._spawn(layer.group_send(PULL_GROUP, {"type": "pull.progress", "pull": job.snapshot()}))

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)  # the loop keeps only weak references to its tasks
        task.add_done_callback(self._tasks.discard)

    def _forget_old(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.state.finished]
        for job_id in finished[: max(0, len(finished) - _FINISHED_KEPT)]:
            del self._jobs[job_id]


def _settle(
    future: asyncio.Future[PulledModel], *, result: PulledModel | None = None, error: BaseException | None = None
) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


_jobs = PullJobs()


def pull_jobs() -> PullJobs:
    """The server process's pulls."""
    return _jobs
