"""Szegedy et al. Table 1: MNIST models, their errors and average minimum L-BFGS distortion.

Runnable on its own from a checkout, the same as `advjax run szegedy_table1 ...`::

    python experiments/szegedy_table1.py --config quick [--set KEY=VALUE ...]

The study itself (configs, stages, findings) is ``advjax.studies.szegedy_table1``,
installed with the package so that the ``advjax`` command finds it from any
directory; ``advjax show szegedy_table1`` lists its fields.
"""

import sys

from advjax import cli

if __name__ == "__main__":
    cli.entry(["run", "szegedy_table1", *sys.argv[1:]])
