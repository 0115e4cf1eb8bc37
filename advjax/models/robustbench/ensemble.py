"""An ensemble of imported networks whose logits are averaged (ensembles saved as files)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class Ensemble(nn.Module):
    """Mean of the members' logits; member ``i``'s variables live under ``members_{i}``.

    Attributes:
      members: the member modules (each maps ``(B, H, W, C)`` to ``(B, K)``, same ``K``).
    """

    members: Sequence[nn.Module]

    input_size: ClassVar[int] = 32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """``(B, H, W, C)`` in [0, 1] → the average of the members' logits ``(B, K)``."""
        if not self.members:
            raise ValueError("`members` must hold at least one module.")
        outs = [m(x, train) for m in self.members]  # Flax names them members_0, members_1, ...
        return jnp.mean(jnp.stack(outs), axis=0)
