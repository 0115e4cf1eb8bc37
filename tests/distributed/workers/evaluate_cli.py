"""Worker: the ``advjax evaluate`` command (argv: the command's arguments after ``evaluate``).

Environment (all optional):

* ``ADVJAX_TEST_PRIVATE_DISK=1``: every process but 0 sees its own empty disk (its ``--out`` is
  moved under ``<out>.process<i>``), as on pod hosts that share no file system;
* ``ADVJAX_TEST_STAGE_LOG=FILE``: each process appends ``<process>:<stage>`` to FILE when it
  starts computing an AutoAttack stage;
* ``ADVJAX_TEST_STOP_AT=STAGE``: process 0 is interrupted (Ctrl-C) when STAGE starts, after it
  saved the stages before (the others stop with it; interrupting them too would let one of them
  stop the group before process 0 saved);
* ``ADVJAX_TEST_FAIL_ON=I``: process I fails (RuntimeError) when its first stage starts;
* ``ADVJAX_TEST_ARGS_<I>="--flag value"``: more arguments for process I only.

The evaluation's log (``evaluate: resumed ...``) goes to stdout.
"""
import logging
import os
import shlex
import sys

from advjax import cli
from advjax.attacks.evaluate import AutoAttackEvaluator

index = os.environ["ADVJAX_PROCESS_ID"]
argv = ["evaluate", *sys.argv[1:], *shlex.split(os.environ.get(f"ADVJAX_TEST_ARGS_{index}", ""))]
if os.environ.get("ADVJAX_TEST_PRIVATE_DISK") == "1" and index != "0":
    at = argv.index("--out") + 1
    argv[at] = f"{argv[at]}.process{index}"

handler = logging.StreamHandler(sys.stdout)
handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
logging.getLogger("advjax.attacks.evaluate").addHandler(handler)

original = AutoAttackEvaluator._run_chunked


def _run_chunked(self, name, *args, **kwargs):
    log = os.environ.get("ADVJAX_TEST_STAGE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{index}:{name}\n")
    if os.environ.get("ADVJAX_TEST_STOP_AT") == name and index == "0":
        raise KeyboardInterrupt
    if os.environ.get("ADVJAX_TEST_FAIL_ON") == index:
        raise RuntimeError(f"process {index} failed on purpose in stage {name}")
    return original(self, name, *args, **kwargs)


AutoAttackEvaluator._run_chunked = _run_chunked
cli.entry(argv)
