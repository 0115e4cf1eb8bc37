"""Metrics: accuracy, robust-accuracy curves, ARA, minimum-distortion statistics, transfer matrices.

* :func:`accuracy`, :func:`correct_predictions`: clean accuracy of a per-example ``logits_fn``.
* :func:`robust_accuracy_curve`: accuracy under any attack taking a per-example ``eps``.
* :func:`ara`, :func:`accuracy_vs_distortion`: Woods et al.'s Accuracy-Robustness Area
  (papers.md §2.10) and the curve it integrates, from per-example minimal distortions.
* :func:`attack_ara`, :func:`btr_ara`: those distortions from Algorithm 1 (``woods_l2``).
* :func:`distortion_stats`: Szegedy et al.'s average minimum distortion and friends.
* :func:`transfer_matrix`, :func:`gaussian_noise_set`, :func:`amplify`: Szegedy et al.'s Tables 2
  and 4 with their control rows.
* ``advjax.metrics.plots``: figures (imported on first use; needs matplotlib).
"""

from advjax.metrics.accuracy import accuracy, correct_predictions, robust_accuracy_curve
from advjax.metrics.ara import ARA_METHODS, accuracy_vs_distortion, ara
from advjax.metrics.ara_attack import AraResult, attack_ara, btr_ara
from advjax.metrics.distortion import DistortionStats, distortion_stats
from advjax.metrics.transfer import (
    amplify,
    amplify_set,
    gaussian_noise_set,
    rms_of,
    transfer_matrix,
)

__all__ = [
    "ARA_METHODS",
    "AraResult",
    "DistortionStats",
    "accuracy",
    "accuracy_vs_distortion",
    "amplify",
    "amplify_set",
    "ara",
    "attack_ara",
    "btr_ara",
    "correct_predictions",
    "distortion_stats",
    "gaussian_noise_set",
    "rms_of",
    "robust_accuracy_curve",
    "transfer_matrix",
]
