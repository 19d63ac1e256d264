"""Run the grid of an experiment: local processes by default, a Dask cluster on request.

The coordinating process plans the jobs not yet in the store, groups short ones into tasks, ships the
tasks to workers and writes every returned record to the :class:`~fastmoe.experiments.store.ResultStore`
as soon as it arrives (one committed row per job). Only the coordinator touches the store.

Executors
---------
``scheduler=None`` (default)
    A :class:`concurrent.futures.ProcessPoolExecutor` on this machine (``forkserver`` start method where
    available, else ``spawn``: the parent never forks an initialised OpenMP runtime). Measured on the
    2-core development machine: pool start-up 0.14 s and 0.1 ms per task, against 0.4 s and 1.6 ms per
    task for a ``dask.distributed.LocalCluster``; the pool is the embedded default.
``scheduler="tcp://host:port"`` (or a ``distributed.Client``)
    The same tasks on an existing Dask cluster. Dask costs about 2 ms per task, so jobs are grouped into
    tasks of about ``batch_seconds`` (0.75 s by default).
``scheduler="synchronous"``
    In this process, one job after the other (debugging).

Threads
-------
Each job's fit gets ``threads_per_job`` OpenMP threads, passed explicitly to :func:`fastmoe.fit`; the local
pool runs ``n_jobs`` processes with ``n_jobs * threads_per_job <= cores``. On a Dask cluster the workers'
``--nthreads`` decides how many tasks run at once: start workers with ``--nthreads cores/threads_per_job``.

Failures
--------
A fit that raises is recorded by the job itself (status ``failed``). A job that kills its worker process is
retried: on Dask a task of several jobs that ends in ``KilledWorker`` is split into single jobs, and a single
job that still kills its worker is recorded as ``crashed``. Locally, a dead process breaks the whole pool;
the pool is rebuilt and the jobs that were in flight are re-run one at a time with nothing beside them, so
the one that kills its process alone is recorded as ``crashed``. The study goes on either way. Any other
error (a worker that dies while the pool starts, named by its exit status or signal; a scheduler address
that does not parse or does not answer; a lost scheduler) stops the run; finished rows stay stored and
re-running resumes.

Interrupts
----------
Local workers ignore SIGINT: Ctrl-C reaches the whole process group, and the coordinator alone handles it.
On an interrupt (``KeyboardInterrupt``, or the command line's SIGINT/SIGTERM handler) the coordinator
terminates its workers, abandons their running jobs and closes the store; nothing of an unfinished job is
stored, so a rerun runs it again.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import multiprocessing
import os
import signal
import sys
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from .definition import Experiment
from .job import crashed_record, run_batch
from .store import ResultStore

__all__ = ["run_experiment", "plan_batches", "resolve_parallelism", "RunSummary", "available_cores"]

Job = Tuple[int, int]

#: Cost model of one job in seconds, ``FIXED_SECONDS + SECONDS_PER_SAMPLE * n``, used only to group short
#: jobs into tasks. Measured for the exact-fit preset (d=2, K=3, k=2) with one thread on the development
#: machine (0.034 s at n = 3000, 0.9 s at n = 1e5); over-fits (k = 3) cost up to ten times more, which
#: only makes their tasks longer.
FIXED_SECONDS = 0.005
SECONDS_PER_SAMPLE = 1e-5

#: Seconds to wait for the first worker of a Dask cluster before giving up.
WORKER_TIMEOUT = 60.0


def available_cores() -> int:
    """Cores this process may use (CPU affinity where the platform reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def resolve_parallelism(n_jobs: Optional[int] = None, threads_per_job: Optional[int] = None,
                        cores: Optional[int] = None) -> Tuple[int, int]:
    """Concurrent jobs and OpenMP threads per job, with ``n_jobs * threads_per_job <= cores``.

    Neither given: one thread per job, one job per core (many small fits parallelise best across fits).
    One given: the other fills the cores. Both given: taken as they are (the caller's choice).
    """
    cores = available_cores() if cores is None else int(cores)
    for name, value in (("n_jobs", n_jobs), ("threads_per_job", threads_per_job)):
        if value is not None and int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if n_jobs is None and threads_per_job is None:
        return cores, 1
    if n_jobs is None:
        return max(1, cores // int(threads_per_job)), int(threads_per_job)
    if threads_per_job is None:
        return int(n_jobs), max(1, cores // int(n_jobs))
    return int(n_jobs), int(threads_per_job)


def job_cost(n: int) -> float:
    """Estimated seconds of one job of size ``n`` (see :data:`SECONDS_PER_SAMPLE`)."""
    return FIXED_SECONDS + SECONDS_PER_SAMPLE * n


#: Orders in which :func:`plan_batches` can hand out a grid's jobs.
ORDERS = ("size", "replication")


def _check_order(order: str) -> None:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")


def plan_batches(jobs: Iterable[Job], batch_seconds: float, order: str = "size") -> List[List[Job]]:
    """Group jobs into tasks of about ``batch_seconds`` each.

    A job that alone exceeds the target is a task of its own; shorter jobs of the same or neighbouring
    sizes are packed until the next one would overshoot.

    ``order="size"`` (default) runs the longest tasks first, which keeps the last tasks short, so the
    workers finish together: the order for a run that goes to the end. ``order="replication"`` runs
    whole replications in turn (each one longest first): a study stopped part-way then holds complete
    replications at every size, whose slopes can already be read, where a study run longest first holds
    only its largest sizes (the n = 1e7 studies: 40 replications of a 1e7 fit before the first 1e5 one).
    """
    _check_order(order)
    ordered = sorted(jobs, key=(lambda job: (-job[0], job[1])) if order == "size" else (lambda job: (job[1], -job[0])))
    batches: List[List[Job]] = []
    current: List[Job] = []
    cost = 0.0
    for job in ordered:
        c = job_cost(job[0])
        if current and cost + c > batch_seconds:
            batches.append(current)
            current, cost = [], 0.0
        current.append(job)
        cost += c
    if current:
        batches.append(current)
    return batches


@dataclasses.dataclass
class RunSummary:
    """What one call of :func:`run_experiment` did."""

    experiment: str
    store: Path
    run_id: int
    total: int  #: jobs in the grid
    already_done: int  #: jobs of the grid found in the store before the run
    completed: int = 0  #: rows added by this run
    duplicates: int = 0  #: results ignored because their key was already stored
    crashed: int = 0  #: jobs recorded as ``crashed``
    wall_time: float = 0.0
    executor: str = ""
    n_workers: int = 0
    threads_per_job: int = 1
    status_counts: dict = dataclasses.field(default_factory=dict)  #: over all stored rows, after the run
    timed_out: bool = False  #: ``stop_after`` ended the run with jobs left


class _Recorder:
    """Writes records to the store and moves the progress bar; the one place rows are added."""

    def __init__(self, store, run_id, summary, progress):
        self.store, self.run_id, self.summary, self.progress = store, run_id, summary, progress
        self.bad = 0

    def add(self, records: Iterable[dict]) -> None:
        for record in records:
            if self.store.add(record, self.run_id):
                self.summary.completed += 1
                self.summary.crashed += record["status"] == "crashed"
                self.bad += record["status"] != "ok"
                self.progress.update(1)
            else:
                self.summary.duplicates += 1
        self.progress.set_postfix(not_ok=self.bad, refresh=False)


def run_experiment(
    experiment: Experiment,
    out,
    *,
    scheduler=None,
    n_jobs: Optional[int] = None,
    threads_per_job: Optional[int] = None,
    batch_seconds: Optional[float] = None,
    retry_failed: bool = False,
    progress: bool = True,
    order: str = "size",
    stop_after: Optional[float] = None,
) -> RunSummary:
    """Run every job of ``experiment`` that the store in ``out`` does not hold yet.

    Parameters
    ----------
    experiment : Experiment
    out : str or Path
        Run directory (the store is ``out / "results.sqlite"``) or a path to an SQLite file.
    scheduler : None, "synchronous", str or distributed.Client, default=None
        Where jobs run (see the module docstring): local processes, this process, or the Dask scheduler
        at that address / behind that client.
    n_jobs : int, optional
        Concurrent local jobs (local pool only); see :func:`resolve_parallelism`.
    threads_per_job : int, optional
        OpenMP threads per fit. Default: cores // n_jobs locally, 1 on a Dask cluster.
    batch_seconds : float, optional
        Target duration of one task; default 0.25 s locally, 0.75 s on Dask.
    retry_failed : bool, default=False
        Delete the stored ``failed`` and ``crashed`` rows of this grid first, so their jobs run again.
    progress : bool, default=True
        Show a tqdm progress bar (completed/total, rate, ETA) on stderr.
    order : {"size", "replication"}, default="size"
        The order of the jobs (:func:`plan_batches`): longest first, or whole replications in turn (for
        a study that will span sessions and should be readable whenever it stops).
    stop_after : float, optional
        Seconds after which no further job starts: the jobs running then finish and are stored (on a
        Dask cluster, tasks are then submitted no more than the cluster's threads at a time, and none
        after the deadline), and the run returns with
        ``RunSummary.timed_out`` set. A run of hours can so end at a chosen time and lose no finished or
        running fit (an interrupt abandons the running ones); the next run resumes from the store.

    Returns
    -------
    RunSummary
    """
    check_run_options(scheduler, n_jobs, threads_per_job, order, stop_after)  # before the store is touched
    deadline = _Deadline(stop_after)
    out = Path(out)
    store = ResultStore(out)
    try:
        store.register(experiment)
        if retry_failed:  # this grid's failures only: those of other sizes stay on record
            store.delete(experiment.name, ("failed", "crashed"), keys=experiment.jobs())
        # Rows of an earlier, larger grid stay stored but are not this grid's jobs.
        done = store.done_keys(experiment.name) & set(experiment.jobs())
        pending = [job for job in experiment.jobs() if job not in done]
        if scheduler is None:
            executor, (workers, threads) = "local", resolve_parallelism(n_jobs, threads_per_job)
        elif isinstance(scheduler, str) and scheduler == "synchronous":
            executor, workers, threads = "synchronous", 1, int(threads_per_job or 1)
        else:
            executor, workers, threads = "dask", None, int(threads_per_job or 1)
        run_id = store.start_run(experiment.name, executor, workers, threads)
        summary = RunSummary(experiment.name, store.path, run_id, experiment.n_jobs, len(done),
                             executor=executor, n_workers=workers or 0, threads_per_job=threads)
        start = time.perf_counter()
        bar = _progress_bar(experiment, len(done), progress)
        recorder = _Recorder(store, run_id, summary, bar)
        try:
            if pending:
                definition = experiment.to_json()
                if executor == "synchronous":
                    for job in (job for batch in plan_batches(pending, 0.0, order) for job in batch):
                        if deadline.passed():
                            break
                        recorder.add(run_batch(definition, [job], threads))
                elif executor == "local":
                    batches = plan_batches(pending, 0.25 if batch_seconds is None else batch_seconds, order)
                    _run_local(experiment, definition, batches, workers, threads, recorder, deadline)
                else:
                    batches = plan_batches(pending, 0.75 if batch_seconds is None else batch_seconds, order)
                    summary.n_workers = _run_dask(experiment, definition, batches, threads, scheduler, recorder,
                                                  deadline)
                    if summary.n_workers:  # known only now: the cluster's, as the local pool's is known at start
                        store.set_run_workers(run_id, summary.n_workers)
                summary.timed_out = deadline.passed() and summary.already_done + summary.completed < summary.total
        finally:
            bar.close()
            summary.wall_time = time.perf_counter() - start
        summary.status_counts = store.status_counts(experiment.name)
        return summary
    finally:
        store.close()


def check_run_options(scheduler=None, n_jobs=None, threads_per_job=None, order="size", stop_after=None) -> None:
    """Refuse the options of a run (:func:`run_experiment`'s) before anything is written: the command
    line checks them before it registers a definition or saves ``experiment.toml``, so that a refused
    command leaves a run directory as it was."""
    check_scheduler(scheduler)
    _check_order(order)
    if stop_after is not None and not stop_after >= 0:  # also refuses NaN
        raise ValueError(f"stop_after must be a number of seconds >= 0, got {stop_after!r}")
    if scheduler is None:
        resolve_parallelism(n_jobs, threads_per_job)
    elif threads_per_job is not None and int(threads_per_job) < 1:
        raise ValueError(f"threads_per_job must be >= 1, got {threads_per_job}")


def check_scheduler(scheduler) -> None:
    """Refuse a ``scheduler`` string that is not a Dask scheduler address, before anything is written.

    A malformed address given to ``distributed.Client`` fails, and the half-built client then blocks the
    interpreter for a minute on its way out; an address that parses but where no scheduler answers fails
    after Dask's connection timeout with an :class:`OSError` (reported by the runner).
    """
    if scheduler is None or not isinstance(scheduler, str) or scheduler == "synchronous":
        return
    try:
        from distributed.comm.addressing import parse_address, parse_host_port
        from distributed.comm.registry import backends
    except ImportError as exc:
        raise RuntimeError("a Dask scheduler needs dask.distributed (pip install 'fastmoe[experiments]')") from exc
    try:
        scheme, location = parse_address(scheduler)
        if scheme not in backends:
            raise ValueError(f"unknown scheme {scheme!r}; Dask knows {', '.join(sorted(backends))}")
        if scheme in ("tcp", "tls"):
            host, port = parse_host_port(location)
            if not host or not 0 < port < 65536:
                raise ValueError("need a host and a port in 1..65535")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"scheduler {scheduler!r} is not a Dask scheduler address such as tcp://host:8786 "
                         f"({exc})") from None


class _NoProgress:
    """The progress bar's interface doing nothing (``--no-progress``: tqdm need not be installed)."""

    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass


def _progress_bar(experiment, initial, enabled):
    if not enabled:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=experiment.n_jobs, initial=initial, desc=experiment.name, unit="job",
                dynamic_ncols=True, file=sys.stderr, smoothing=0.1)


# -- local process pool -----------------------------------------------------------------------------------
def _mp_context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _watch_parent(parent_pid: int, coordinator_pid: int) -> None:
    # A worker must not outlive the coordinator (kill -9 or Ctrl-C leaves no one to shut the pool down).
    # Under forkserver the worker's parent is the fork server, which may outlive the coordinator (seen
    # after SIGTERM: orphaned workers went on fitting), so the coordinator itself is watched too.
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid or not _pid_alive(coordinator_pid):
            os._exit(1)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else (cannot happen for our coordinator)
        return True
    return True


def _worker_init(coordinator_pid: int) -> None:
    # Ctrl-C reaches the whole process group; the coordinator alone decides what happens (it stops the
    # workers), so a worker does not die half-way through a job with a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(os.getppid(), coordinator_pid), daemon=True).start()


def _new_pool(workers: int) -> ProcessPoolExecutor:
    """A started pool; raises, saying why, if a worker cannot even start (that is not any job's fault)."""
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context(), initializer=_worker_init,
                               initargs=(os.getpid(),))
    try:
        pool.submit(os.getpid).result()
    except BrokenProcessPool as exc:
        processes = list(_pool_processes(pool))
        pool.shutdown(wait=True)  # joins the workers, so their exit codes are known
        raise RuntimeError(f"could not start local worker processes: {_why_dead(processes)}") from exc
    return pool


def _pool_processes(pool) -> list:
    # The pool's worker processes. Private in concurrent.futures (Python 3.14 adds terminate_workers), and
    # read only to stop workers on an interrupt and to say why a pool could not start.
    return list((getattr(pool, "_processes", None) or {}).values())


def _why_dead(processes) -> str:
    """Why the first workers of a pool died, from their exit codes."""
    codes = [p.exitcode for p in processes if p.exitcode]
    # When one worker dies the pool terminates the others (SIGTERM): the other codes name the cause.
    own = [c for c in codes if c != -signal.SIGTERM] or codes
    if not own:
        return "a worker died while starting"
    code = own[0]
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        return (f"a worker was killed by {name} while the pool started (by another process, or the "
                "out-of-memory killer); finished jobs are stored, run again to resume")
    why = f"a worker exited with status {code} while starting (its error is printed above)"
    main = sys.modules.get("__main__")
    if getattr(main, "__file__", None):
        why += ("; if it speaks of the 'bootstrapping phase', the script that calls run_experiment needs an "
                "'if __name__ == \"__main__\":' guard")
    return why


def _stop_workers(pool) -> None:
    """Terminate the pool's workers now (an interrupt): shutting the pool down would wait for their jobs."""
    for process in _pool_processes(pool):
        with contextlib.suppress(Exception):
            process.terminate()


class _Deadline:
    """``stop_after`` seconds from now (never, when None): after it no job starts."""

    def __init__(self, stop_after):
        self._at = None if stop_after is None else time.monotonic() + stop_after

    @property
    def active(self) -> bool:
        return self._at is not None

    def passed(self) -> bool:
        return self._at is not None and time.monotonic() >= self._at


def _run_local(experiment, definition, batches, workers, threads, recorder, deadline) -> None:
    queue = collections.deque(batches)
    suspects: collections.deque = collections.deque()  # jobs that were in flight when the pool broke
    pool = _new_pool(workers)
    inflight: dict = {}
    alone = False  # whether the only task in flight is a suspect running in isolation
    try:
        while queue or suspects or inflight:
            if deadline.passed():
                # No job starts after the deadline; the running ones finish.
                queue.clear()
                suspects.clear()
                for future in [f for f in inflight if f.cancel()]:
                    del inflight[future]
                if not inflight:
                    break
            if suspects:
                # Isolation: a suspect runs with nothing beside it, so a crash names the culprit.
                if not inflight:
                    job = suspects.popleft()
                    inflight[pool.submit(run_batch, definition, [job], threads)] = [job]
                    alone = True
            else:
                # Bounded, so that little work is lost on a crash. With a deadline, no more tasks than
                # workers: the pool hands a queued task to a worker process as soon as one is free, and
                # such a task could no longer be cancelled at the deadline.
                while queue and len(inflight) < (1 if deadline.active else 2) * workers:
                    batch = queue.popleft()
                    inflight[pool.submit(run_batch, definition, batch, threads)] = batch
            wait(list(inflight), return_when=FIRST_COMPLETED)
            broken = []
            for future in [f for f in inflight if f.done()]:
                batch = inflight.pop(future)
                try:
                    recorder.add(future.result())
                except BrokenProcessPool:
                    broken.append(batch)
            if not broken:
                alone = alone and bool(inflight)
                continue
            # Every unfinished future of a broken pool fails with it.
            for future in list(inflight):
                batch = inflight.pop(future)
                try:
                    recorder.add(future.result())
                except BrokenProcessPool:
                    broken.append(batch)
            pool.shutdown(wait=True)
            pool = _new_pool(workers)
            if alone:
                (job,) = broken[0]
                recorder.add([crashed_record(experiment, *job, "the job killed its worker process")])
                alone = False
            else:
                suspects.extend(job for batch in broken for job in batch)
    except BaseException:  # SIGINT/SIGTERM (KeyboardInterrupt) or an error: running jobs are abandoned
        _stop_workers(pool)
        # With its workers gone the pool's manager thread ends at once; waiting for it here keeps
        # CPython 3.11's exit hook from racing it on the wake-up pipe ("Exception ignored ... Bad file
        # descriptor" under the command's one-line message, seen once in a loaded test run).
        with contextlib.suppress(Exception):
            pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


# -- Dask ---------------------------------------------------------------------------------------------
def _run_dask(experiment, definition, batches, threads, scheduler, recorder, deadline) -> int:
    from distributed import Client, as_completed
    from distributed.scheduler import KilledWorker

    own_client = not hasattr(scheduler, "submit")
    try:
        client = Client(scheduler, set_as_default=False) if own_client else scheduler
    except OSError as exc:  # nothing answers at that address (after Dask's connection timeout)
        raise RuntimeError(f"could not reach a Dask scheduler at {scheduler}: {exc}") from None
    tag = uuid.uuid4().hex[:8]
    counter = iter(range(1 << 62))
    tasks: dict = {}

    def submit(batch):
        key = f"fastmoe-{experiment.name}-{tag}-{next(counter)}"
        future = client.submit(run_batch, definition, batch, threads, key=key, pure=False)
        tasks[future.key] = batch
        return future

    try:
        try:  # tasks would wait forever on a cluster without workers
            client.wait_for_workers(1, timeout=WORKER_TIMEOUT)
        except TimeoutError as exc:
            raise RuntimeError(f"no Dask worker joined {client.scheduler.address} "
                               f"within {WORKER_TIMEOUT:.0f} s") from exc
        workers = client.scheduler_info().get("workers", {})
        n_workers = len(workers)
        # With a deadline, no more tasks than the cluster has threads: the scheduler hands a held task to
        # a worker as soon as one is free, so at the deadline the submitted tasks are (about to be)
        # running; none is submitted after it, and those submitted finish and are stored. Without one,
        # every task is submitted at once and the scheduler balances them.
        slots = max(1, sum(int(w.get("nthreads", 1)) for w in workers.values())) if deadline.active else None
        queue = collections.deque(batches)
        futures = as_completed([], loop=client.loop)

        def top_up():
            while queue and (slots is None or len(tasks) < slots) and not deadline.passed():
                futures.add(submit(queue.popleft()))

        top_up()
        for future in futures:
            batch = tasks.pop(future.key)
            try:
                records = future.result()
            except KilledWorker as exc:
                if len(batch) > 1:
                    # Find the culprit: every job on its own, first in the queue (within the slots and
                    # the deadline like any task).
                    queue.extendleft([job] for job in reversed(batch))
                else:
                    recorder.add([crashed_record(experiment, *batch[0], f"KilledWorker: {exc}")])
                records = []
            finally:
                future.release()
            recorder.add(records)
            top_up()
        return n_workers
    finally:
        if own_client:
            client.close()
