"""Spectral-norm Lipschitz bounds, lower bounds, certificates and regularisers.

Szegedy et al. (2013), §4.3 (papers.md §1.6). Public API:

* ``dense_norm(kernel)``, ``conv_norm(kernel, input_shape, strides=, padding=, method=)``: operator
  2-norms (``"fft"``: Fourier formula with stride alias groups; ``"exact"``: power iteration).
* ``layer_bounds(logits_fn, x_example) -> LipschitzReport``: per-layer bounds and a sound network
  bound from a walk over the jaxpr; ``table5(report)`` renders it.
* ``local_lower_bound(logits_fn, xs)``: largest Jacobian spectral norm found (a lower bound).
* ``certified_radius(logits, label, lipschitz)``: margin / (√2 L) L2 certificate.
* ``spectral_penalty(specs)`` (init/update), ``spectral_normalize(kernel, u)``: regularisers.
* ``contrast_normalize(x, eps=, gamma=)``: contrast normalisation layer the walk bounds by ``ε^-γ``.
* ``DEFAULT_RULES`` (a ``RuleTable``): the walk's immutable rule table;
  ``DEFAULT_RULES.extend(...)`` gives a new table to pass as ``layer_bounds(..., rules=)``.
"""

from advjax.lipschitz.contrast import contrast_normalize
from advjax.lipschitz.graph import layer_bounds
from advjax.lipschitz.local import certified_radius, jacobian_norm, local_lower_bound
from advjax.lipschitz.regularizers import (
    LayerSpec,
    SpectralPenalty,
    SpectralState,
    conv_spec,
    dense_spec,
    spectral_normalize,
    spectral_penalty,
)
from advjax.lipschitz.report import (
    LayerBound,
    LipschitzReport,
    UnsupportedPrimitiveError,
    table5,
)
from advjax.lipschitz.rules import DEFAULT_RULES
from advjax.lipschitz.spectral import (
    conv_norm,
    conv_operator,
    dense_norm,
    fourier_singular_values,
    power_iteration,
    subspace_iteration,
)
from advjax.lipschitz.walker import RuleTable

__all__ = [
    "DEFAULT_RULES",
    "LayerBound",
    "LayerSpec",
    "LipschitzReport",
    "RuleTable",
    "SpectralPenalty",
    "SpectralState",
    "UnsupportedPrimitiveError",
    "certified_radius",
    "contrast_normalize",
    "conv_norm",
    "conv_operator",
    "conv_spec",
    "dense_norm",
    "dense_spec",
    "fourier_singular_values",
    "jacobian_norm",
    "layer_bounds",
    "local_lower_bound",
    "power_iteration",
    "spectral_normalize",
    "spectral_penalty",
    "subspace_iteration",
    "table5",
]
