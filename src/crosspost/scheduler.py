"""The service: APScheduler decides *when* to look at the queue; the queue stays the truth.

There are no per-post jobs. One-off "wake" jobs fire at the next due time the queue reports (a
publish time, a retry time or a lease's end); adding a post wakes the service at once (in
process by `wake()`, across processes by PostgreSQL LISTEN/NOTIFY). A slow safety poll covers
what no one announced (SQLite has no NOTIFY; another process may add a post there).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor as JobExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from crosspost.campaigns import Campaign
from crosspost.dispatcher import Clock, Dispatcher, Outcome, utc_now
from crosspost.queue import Queue
from crosspost.settings import Settings
from crosspost.targets import Targets

log = logging.getLogger("crosspost.service")


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Service:
    """Scheduler + dispatcher for one process; several may share one PostgreSQL queue."""

    def __init__(
        self,
        settings: Settings,
        queue: Queue,
        targets: Targets,
        campaigns: Mapping[str, Campaign],
        *,
        clock: Clock = utc_now,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.clock = clock
        self.worker_id = worker_id or default_worker_id()
        self.dispatcher = Dispatcher(
            queue,
            targets,
            settings,
            worker_id=self.worker_id,
            campaigns=campaigns,
            clock=clock,
            on_outcome=self._on_outcome,
        )
        self.poll = timedelta(seconds=30 if queue.is_postgres else 1)
        self.scheduler = BackgroundScheduler(
            timezone="UTC",
            executors={"default": JobExecutor(2)},
            job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1},
        )
        self._lock = threading.Lock()
        self._tick_lock = threading.Lock()
        self._again = False
        self._wake_at: datetime | None = None
        self._wake_job: str | None = None
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self.last_tick: datetime | None = None
        self.outcomes: dict[str, int] = {}
        # Called with every outcome after it is counted (the API's metrics: lag, retries).
        self.outcome_listeners: list[Callable[[Outcome], None]] = []

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.scheduler.start()
        renew_every = max(self.settings.lease_seconds / 3, 0.2)
        self.scheduler.add_job(
            self.dispatcher.renew_leases,
            IntervalTrigger(seconds=renew_every),
            id="renew-leases",
        )
        if self.queue.is_postgres:
            self._listener = threading.Thread(
                target=self.queue.listen,
                args=(self.wake, self._stop),
                daemon=True,
                name="listen",
            )
            self._listener.start()
        self.wake()

    def stop(self, grace: float) -> None:
        """Stop claiming, give back unstarted claims, wait up to `grace` for running ones."""
        self._stop.set()
        self.dispatcher.shutdown(grace)
        self.scheduler.shutdown(wait=False)

    @property
    def alive(self) -> bool:
        return bool(self.scheduler.running) and not self._stop.is_set()

    # -- waking ----------------------------------------------------------------------------

    def wake(self, at: datetime | None = None) -> None:
        """Look at the queue at `at` (default now), unless a look is already due sooner."""
        if self._stop.is_set():
            return
        # APScheduler runs on the wall clock; `self.clock` may be another (an injected one,
        # which may jump), so the wake-up is planned and compared in wall-clock time.
        now = self.clock()
        run_at = utc_now() + ((at or now) - now)
        with self._lock:
            if self._wake_at is not None and self._wake_at <= run_at:
                return
            if self._wake_job is not None:
                with contextlib.suppress(JobLookupError):
                    self.scheduler.remove_job(self._wake_job)
            self._wake_job = f"wake-{uuid.uuid4().hex}"
            self._wake_at = run_at
            self.scheduler.add_job(self._tick, DateTrigger(run_at), id=self._wake_job)

    def _tick(self) -> None:
        with self._lock:
            self._wake_at = None
            self._wake_job = None
        if not self._tick_lock.acquire(blocking=False):
            self._again = True
            return
        try:
            while True:
                self._again = False
                self.last_tick = self.clock()
                started = self.dispatcher.dispatch_due()
                if not self._again and started == 0:
                    break
                if self.dispatcher.in_flight() >= self.dispatcher.capacity * 2:
                    break  # full: a finished delivery wakes us
        except Exception:
            log.exception("dispatch failed; trying again shortly")
            self.wake(self.clock() + timedelta(seconds=1))
            return
        finally:
            self._tick_lock.release()
        self._plan_next()

    def _plan_next(self) -> None:
        now = self.clock()
        try:
            due = self.queue.next_due(self.dispatcher.blocked_targets(now))
        except Exception:
            log.exception("could not read the next due time")
            due = None
        if self.dispatcher.in_flight() >= self.dispatcher.capacity * 2:
            due = None  # full: waking now would only spin; a finished delivery wakes us
        soonest = now + self.poll
        for moment in (due, self.dispatcher.next_release(now)):
            if moment is not None and moment < soonest:
                soonest = max(moment, now)
        self.wake(soonest)

    def _on_outcome(self, outcome: Outcome) -> None:
        with self._lock:
            key = str(outcome.state) if outcome.state else "lost"
            self.outcomes[key] = self.outcomes.get(key, 0) + 1
        for listener in list(self.outcome_listeners):
            try:
                listener(outcome)
            except Exception:
                log.exception("an outcome listener failed")
        # A slot is free and the outcome may have set a retry time: look again.
        self.wake()

    # -- draining (--until-idle) -------------------------------------------------------------

    def drained(self) -> bool:
        """Nothing in flight here and nothing due now."""
        if self.dispatcher.in_flight():
            return False
        now = self.clock()
        due = self.queue.next_due(self.dispatcher.blocked_targets(now))
        return due is None or due > now
