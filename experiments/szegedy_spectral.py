"""Szegedy et al. §4.3 / Table 5: upper Lipschitz bounds of every layer, and lower bounds beside.

Runnable on its own from a checkout, the same as `advjax run szegedy_spectral ...`::

    python experiments/szegedy_spectral.py --config quick [--set KEY=VALUE ...]

The study itself (configs, stages, findings) is ``advjax.studies.szegedy_spectral``,
installed with the package so that the ``advjax`` command finds it from any
directory; ``advjax show szegedy_spectral`` lists its fields.
"""

import sys

from advjax import cli

if __name__ == "__main__":
    cli.entry(["run", "szegedy_spectral", *sys.argv[1:]])
