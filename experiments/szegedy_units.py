"""Szegedy et al. §3: units of φ(x) vs random directions — which images maximise each?

Runnable on its own from a checkout, the same as `advjax run szegedy_units ...`::

    python experiments/szegedy_units.py --config quick [--set KEY=VALUE ...]

The study itself (configs, stages, findings) is ``advjax.studies.szegedy_units``,
installed with the package so that the ``advjax`` command finds it from any
directory; ``advjax show szegedy_units`` lists its fields.
"""

import sys

from advjax import cli

if __name__ == "__main__":
    cli.entry(["run", "szegedy_units", *sys.argv[1:]])
