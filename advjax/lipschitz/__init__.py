"""Spectral-norm Lipschitz bounds (Szegedy et al. 2013, §4.3; papers.md §1.6)."""

from advjax.lipschitz.spectral import conv_norm, dense_norm, power_iteration

__all__ = ["conv_norm", "dense_norm", "power_iteration"]
