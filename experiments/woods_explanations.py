"""Woods et al. adversarial explanations of the released CIFAR-10 ResNet-44 checkpoints.

Runnable on its own from a checkout, the same as `advjax run woods_explanations ...`::

    python experiments/woods_explanations.py --config quick [--set KEY=VALUE ...]

The study itself (configs, stages, findings) is ``advjax.studies.woods_explanations``,
installed with the package so that the ``advjax`` command finds it from any
directory; ``advjax show woods_explanations`` lists its fields.
"""

import sys

from advjax import cli

if __name__ == "__main__":
    cli.entry(["run", "woods_explanations", *sys.argv[1:]])
