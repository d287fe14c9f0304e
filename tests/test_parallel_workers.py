"""experiments.map_jobs never hangs when a worker dies (issue 20, hangs): os._exit, SIGKILL, an
exception that cannot be unpickled; it names the job. A hang fails the test (signal.alarm) instead
of blocking the suite."""
import os
import signal
import time

import pytest

from pxpo_lite.experiments.parallel import WorkerDied, can_fork, map_jobs

pytestmark = pytest.mark.skipif(not can_fork("cpu"), reason="forked workers need Linux on a CPU")
LIMIT_S = 60


@pytest.fixture(autouse=True)
def no_hang():
    def fail(*_):
        raise TimeoutError(f"map_jobs hung for more than {LIMIT_S} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


class NeedsTwoArgs(Exception):
    def __init__(self, a, b):  # pickled as NeedsTwoArgs(a): cannot be unpickled
        super().__init__(a)
        self.b = b


def _die(how):
    def fn(job):  # a closure: inherited by the forked workers, never pickled
        if job == ("bad", 2):
            if how == "exit":
                os._exit(3)
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise NeedsTwoArgs("x", "y")
        time.sleep(0.05)
        return job[1] * 10
    return fn


@pytest.mark.parametrize("how", ["exit", "kill", "unpicklable"])
def test_a_dead_worker_raises_naming_the_job(how):
    jobs = [("ok", 0), ("ok", 1), ("bad", 2), ("ok", 3)]
    t = time.perf_counter()
    with pytest.raises(WorkerDied, match=r"job 2: \('bad', 2\).*processes=1"):
        map_jobs(_die(how), jobs, processes=2)
    assert time.perf_counter() - t < 30


def test_results_equal_the_sequential_ones_in_order():
    jobs = [("ok", i) for i in range(7)]
    seen = []
    par = map_jobs(_die("exit"), jobs, processes=2, on_result=lambda k, r: seen.append(k))
    assert par == map_jobs(_die("exit"), jobs, processes=1) == [i * 10 for i in range(7)]
    assert seen == list(range(7))


def test_an_ordinary_exception_is_raised_as_it_is():
    def fn(job):
        if job == 1:
            raise ValueError("job 1 is bad")
        return job

    with pytest.raises(ValueError, match="job 1 is bad"):
        map_jobs(fn, [0, 1, 2], processes=2)
    assert map_jobs(fn, [0, 2], processes=2) == [0, 2]  # the module is usable again afterwards
