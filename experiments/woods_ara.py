"""Woods et al.: robustness from training changes, measured by Attack ARA and BTR ARA.

Runnable on its own from a checkout, the same as `advjax run woods_ara ...`::

    python experiments/woods_ara.py --config quick [--set KEY=VALUE ...]

The study itself (configs, stages, findings) is ``advjax.studies.woods_ara``,
installed with the package so that the ``advjax`` command finds it from any
directory; ``advjax show woods_ara`` lists its fields.
"""

import sys

from advjax import cli

if __name__ == "__main__":
    cli.entry(["run", "woods_ara", *sys.argv[1:]])
