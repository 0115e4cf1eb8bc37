"""Starts P real processes on 127.0.0.1 joined by ``jax.distributed`` (CPU devices, gloo).

Each process runs the same Python file with ``ADVJAX_COORDINATOR_ADDRESS``, ``ADVJAX_NUM_PROCESSES``
and ``ADVJAX_PROCESS_ID`` set (read by :func:`advjax.parallel.initialize_distributed`) and
``XLA_FLAGS=--xla_force_host_platform_device_count=D``. When one process fails, the others are
killed at once; a run past ``timeout`` kills all. Nothing here hangs a test run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_env(num_processes: int, process_id: int, local_devices: int, port: int,
                extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of process ``process_id`` of ``num_processes``."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={local_devices}",
        ADVJAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        ADVJAX_NUM_PROCESSES=str(num_processes),
        ADVJAX_PROCESS_ID=str(process_id),
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


class ProcessesFailed(RuntimeError):
    """A process exited with an error or the group ran past its timeout."""


def run_processes(argv: Sequence[str], num_processes: int, *, local_devices: int = 1,
                  timeout: float = 120.0, cwd: str | os.PathLike | None = None,
                  env: dict[str, str] | None = None) -> list[str]:
    """Runs ``python *argv`` as ``num_processes`` processes; returns their stdouts, by process id.

    Args:
      argv: the script (and its arguments) each process runs.
      num_processes: P >= 1; with P = 1 the process still runs under ``jax.distributed``.
      local_devices: D CPU devices per process.
      timeout: seconds for the whole group.
      cwd, env: working directory and extra environment variables of every process.

    Raises:
      ProcessesFailed: naming the first process that failed (or the timeout), with the last
        lines of every process's stderr.
    """
    port = free_port()
    logs = [Path(os.environ.get("TMPDIR", "/tmp")) / f"advjax-mp-{port}-{i}" for i in
            range(num_processes)]
    procs = []
    for i in range(num_processes):
        out = open(f"{logs[i]}.out", "w")  # noqa: SIM115
        err = open(f"{logs[i]}.err", "w")  # noqa: SIM115
        procs.append((subprocess.Popen(
            [sys.executable, *map(str, argv)], cwd=cwd, stdout=out, stderr=err,
            env=process_env(num_processes, i, local_devices, port, env)), out, err))
    deadline = time.monotonic() + timeout
    failure = None
    try:
        while True:
            codes = [p.poll() for p, _, _ in procs]
            bad = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                failure = f"process {bad[0]} of {num_processes} exited with {codes[bad[0]]}"
                break
            if all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                failure = f"timeout after {timeout:.0f} s (exit codes {codes})"
                break
            time.sleep(0.05)
    finally:
        for p, _, _ in procs:
            if p.poll() is None:
                p.kill()
        for p, out, err in procs:
            p.wait()
            out.close()
            err.close()
    stdouts = [Path(f"{log}.out").read_text() for log in logs]
    if failure is not None:
        tails = "\n".join(f"--- process {i} stderr (tail) ---\n"
                          + "\n".join(Path(f"{log}.err").read_text().splitlines()[-25:])
                          for i, log in enumerate(logs))
        raise ProcessesFailed(f"{failure}\n{tails}")
    for log in logs:
        for suffix in (".out", ".err"):
            Path(f"{log}{suffix}").unlink(missing_ok=True)
    return stdouts
