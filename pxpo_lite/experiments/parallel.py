"""Independent runs on several CPU cores: a forked process pool, one torch thread per process.

The tiny model's operations are small, so more torch threads per run help little; on a CPU the
better use of more cores is to train several runs at once (2 runs on 2 cores: 12.9 s one after
another with 2 threads, 8.7 s side by side with 1 thread each). Runs are
independent (each trains its own copy of the base pipeline from its own seed), so the results
are those of one run after another, up to floating-point summation order (one torch thread
per worker); ``tests/test_experiments.py`` checks that.

Workers are *forked*: they inherit the pipeline, tasks and segmenter already in memory, so
nothing but a job index goes in and plain numbers come back. Where forking is not possible or
not safe — a GPU (CUDA cannot be forked), macOS, Windows, or one job — :func:`map_jobs` runs the jobs
in this process one after another.

**No hang when a worker dies.** The pool is :class:`concurrent.futures.ProcessPoolExecutor` (fork
context), which notices a worker that exits without a result (``os._exit``, SIGKILL from the
out-of-memory killer, a result or exception that cannot be unpickled) and fails every waiting
job (``BrokenProcessPool``); :func:`map_jobs` then raises :class:`WorkerDied` naming the job(s) that
were running and what to do. (``multiprocessing.Pool`` loses such a task and waits forever.)
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Sequence

import torch

_WORK: dict = {}
_PENDING, _RUNNING, _DONE = 0, 1, 2


class WorkerDied(RuntimeError):
    """A worker process of :func:`map_jobs` ended without returning its job's result."""


def default_jobs(n_jobs: int, device="cpu") -> int:
    """Processes to use for ``n_jobs`` independent runs: the CPU cores (at most ``n_jobs``) on a
    CPU where forking is available, else 1."""
    if not can_fork(device):
        return 1
    return max(1, min(n_jobs, os.cpu_count() or 1))


def can_fork(device="cpu") -> bool:
    """Forked workers are possible: a CPU device on Linux (Colab included), and torch has not started
    CUDA. (macOS can fork, but its system frameworks are not fork-safe; Windows cannot.)"""
    return (str(device).startswith("cpu") and sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods()
            and not (torch.cuda.is_available() and torch.cuda.is_initialized()))


def _call(i: int):
    torch.set_num_threads(1)
    _WORK["state"][i] = _RUNNING  # shared memory: the parent can name the job a dead worker was running
    out = _WORK["fn"](_WORK["jobs"][i])
    _WORK["state"][i] = _DONE
    return out


def _died(jobs: list, state, k: int, err: BaseException) -> WorkerDied:
    running = [i for i in range(len(jobs)) if state[i] == _RUNNING] or [k]
    names = "; ".join(f"job {i}: {repr(jobs[i])[:120]}" for i in running)
    return WorkerDied(
        f"map_jobs: a worker process died without returning a result (killed, e.g. by the out-of-memory killer; "
        f"os._exit; or a result or exception that cannot be pickled) while running {names} "
        f"[{type(err).__name__}: {err}]. Run with processes=1 to see the error in this process, or use fewer "
        "processes if memory ran out"
    )


def map_jobs(fn: Callable, jobs: Sequence, processes: int | None = None, device="cpu", on_result: Callable | None = None) -> list:
    """``[fn(job) for job in jobs]``, over ``processes`` forked workers (None: :func:`default_jobs`).

    ``fn`` and the jobs may be closures or hold models (they are inherited, not pickled); each
    result must be picklable. ``on_result(k, result)`` is called as each one arrives (in order),
    e.g. to advance a progress bar. An exception in ``fn`` is raised here as it is; a worker that
    dies (killed, ``os._exit``, an unpicklable result) raises :class:`WorkerDied` naming the job.
    """
    jobs = list(jobs)
    if processes is None:
        processes = default_jobs(len(jobs), device)
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be an int >= 1 (or None: one per CPU core), got {processes!r}")
    processes = min(processes, len(jobs)) if jobs else 1
    out = []
    if processes == 1 or not can_fork(device):
        for k, job in enumerate(jobs):
            out.append(fn(job))
            if on_result:
                on_result(k, out[-1])
        return out
    state = mp.get_context("fork").Array("b", len(jobs), lock=False)
    _WORK.update(fn=fn, jobs=jobs, state=state)
    ex = ProcessPoolExecutor(processes, mp_context=mp.get_context("fork"))
    try:
        futures = [ex.submit(_call, i) for i in range(len(jobs))]
        for k, f in enumerate(futures):
            try:
                r = f.result()
            except BrokenProcessPool as e:
                raise _died(jobs, state, k, e) from e
            out.append(r)
            if on_result:
                on_result(k, r)
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)  # an error or a dead worker: do not wait for the other jobs
        for proc in list((getattr(ex, "_processes", None) or {}).values()):
            proc.terminate()
        raise
    else:
        ex.shutdown(wait=True)
    finally:
        _WORK.clear()
    return out
