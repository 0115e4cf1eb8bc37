"""Worker: the ``advjax`` command on the toy study package (argv: the command's arguments).

With ``ADVJAX_TEST_PRIVATE_DISK=1`` every process but 0 sees its own empty disk: its ``--out``
is moved under ``<out>.process<i>``, as on pod hosts that share no file system.
"""
import os
import sys

from advjax import cli, pipeline

pipeline.STUDIES_PACKAGE = "tests.experiments.toy_studies"
sys.argv[0] = "advjax"
argv = sys.argv[1:]
index = os.environ["ADVJAX_PROCESS_ID"]
if os.environ.get("ADVJAX_TEST_PRIVATE_DISK") == "1" and index != "0":
    at = argv.index("--out") + 1
    argv[at] = f"{argv[at]}.process{index}"
cli.entry(argv)
