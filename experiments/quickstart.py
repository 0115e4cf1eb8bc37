"""Quickstart: train a Szegedy network, measure clean accuracy, minimum distortion and bounds.

Runnable on its own from a checkout, the same as `advjax run quickstart ...`::

    python experiments/quickstart.py --config quick [--set KEY=VALUE ...]

The study itself (configs, stages, findings) is ``advjax.studies.quickstart``,
installed with the package so that the ``advjax`` command finds it from any
directory; ``advjax show quickstart`` lists its fields.
"""

import sys

from advjax import cli

if __name__ == "__main__":
    cli.entry(["run", "quickstart", *sys.argv[1:]])
