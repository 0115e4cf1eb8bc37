"""Szegedy et al. §4.2: adversarial training with a continuously refreshed pool of examples.

Runnable on its own from a checkout, the same as `advjax run szegedy_adversarial_training ...`::

    python experiments/szegedy_adversarial_training.py --config quick [--set KEY=VALUE ...]

The study itself (configs, stages, findings) is ``advjax.studies.szegedy_adversarial_training``,
installed with the package so that the ``advjax`` command finds it from any
directory; ``advjax show szegedy_adversarial_training`` lists its fields.
"""

import sys

from advjax import cli

if __name__ == "__main__":
    cli.entry(["run", "szegedy_adversarial_training", *sys.argv[1:]])
