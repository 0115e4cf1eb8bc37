"""Szegedy et al. Tables 2–4: transfer of adversarial examples across models and training sets.

Runnable on its own from a checkout, the same as `advjax run szegedy_transfer ...`::

    python experiments/szegedy_transfer.py --config quick [--set KEY=VALUE ...]

The study itself (configs, stages, findings) is ``advjax.studies.szegedy_transfer``,
installed with the package so that the ``advjax`` command finds it from any
directory; ``advjax show szegedy_transfer`` lists its fields.
"""

import sys

from advjax import cli

if __name__ == "__main__":
    cli.entry(["run", "szegedy_transfer", *sys.argv[1:]])
