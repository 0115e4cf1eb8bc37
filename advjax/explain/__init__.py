"""Adversarial explanations (Woods, Chen & Teuscher 2019, papers.md §2.11).

* :func:`explain`: ``g_explain+`` of one image for one class (Algorithm 1 with ``encourage=True``).
* :func:`explain_classes`: the ``"real"``, ``"second"`` or ``"all"`` classes of one image.
* :func:`explanation_strength`: target log-probability (or probability) gained per unit RMSE.
* :func:`explanation_grid`, :func:`confidence_caption`: PNG grids with confidences in captions.
"""

from advjax.explain.explanations import (
    TARGET_MODES,
    Explanation,
    explain,
    explain_classes,
    explanation_strength,
    explanation_targets,
)
from advjax.explain.grid import confidence_caption, explanation_grid

__all__ = [
    "TARGET_MODES",
    "Explanation",
    "confidence_caption",
    "explain",
    "explain_classes",
    "explanation_grid",
    "explanation_strength",
    "explanation_targets",
]
