"""The multi-process launcher and ``parallel.initialize_distributed`` with real processes."""

import time

import pytest

from advjax import parallel
from tests.distributed.launch import ProcessesFailed, run_processes

WORKER = "tests/distributed/workers/hello.py"


def _results(stdouts):
    return [next(line.split()[1:] for line in out.splitlines() if line.startswith("RESULT"))
            for out in stdouts]


@pytest.mark.parametrize("p,d", [(2, 2), (4, 1)])
def test_processes_join_through_advjax_settings(p, d):
    rows = _results(run_processes([WORKER], p, local_devices=d, timeout=90))
    for i, row in enumerate(rows):
        assert row[:4] == [str(i), str(p), str(p * d), str(d)]
        assert "".join(row[4:]) == str(list(range(p))).replace(" ", "")


def test_a_failing_process_stops_the_group_quickly():
    t0 = time.monotonic()
    with pytest.raises(ProcessesFailed, match="(?s)process 1 of 2 exited with 3.*on purpose"):
        run_processes([WORKER, "1"], 2, local_devices=1, timeout=90)
    assert time.monotonic() - t0 < 30  # the other process is killed, not waited for


@pytest.mark.parametrize("kwargs,match", [
    (dict(coordinator_address="127.0.0.1:1"), "missing ADVJAX_NUM_PROCESSES, ADVJAX_PROCESS_ID"),
    (dict(coordinator_address="127.0.0.1:1", num_processes="two", process_id=0),
     "must be integers"),
    (dict(coordinator_address="127.0.0.1:1", num_processes=2, process_id=2), r"not in \[0, 2\)"),
])
def test_incomplete_settings_are_refused_before_jax_starts(kwargs, match, monkeypatch):
    for name in (parallel.COORDINATOR_ENV, parallel.NUM_PROCESSES_ENV, parallel.PROCESS_ID_ENV):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=match):
        parallel.initialize_distributed(**kwargs)


def test_single_process_without_settings_does_nothing(monkeypatch):
    for name in (parallel.COORDINATOR_ENV, parallel.NUM_PROCESSES_ENV, parallel.PROCESS_ID_ENV,
                 "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                 "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert parallel.initialize_distributed() is False
