"""advjax: adversarial robustness research in JAX.

Pure functional modules, batched by transforms:

* ``advjax.attacks``   per-example adversarial searches (``jax.jit(jax.vmap(attack))`` just works)
* ``advjax.lipschitz`` spectral-norm Lipschitz bounds, lower bounds and certified radii
* ``advjax.models``    Flax model zoo and adapters to per-example ``logits_fn(x) -> logits``
* ``advjax.data``      ``load(name, split)``: TFDS, IDX/NumPy readers, offline default data
* ``advjax.train``     optax training steps, robust training, checkpoints
* ``advjax.metrics``   accuracy, robust-accuracy curves, ARA, transfer matrices
* ``advjax.explain``   adversarial explanations
* ``advjax.parallel``  meshes and sharded batch attacks
* ``advjax.enable_compilation_cache()``  JAX's persistent compilation cache (the CLI turns it on)

Sub-packages are imported on first access, so ``import advjax`` does no work beyond
:mod:`advjax.xla_cpu`, which sets the one XLA:CPU option CNN attacks need to use every core
(before JAX starts a backend; opt out with ``ADVJAX_XLA_CPU_TUNING=0``).
"""

from __future__ import annotations

import importlib
from typing import Any

from advjax import xla_cpu  # noqa: F401  (first: XLA reads XLA_FLAGS when a backend starts)

__version__ = "0.1.0"

_SUBMODULES = (
        "attacks",
        "data",
        "explain",
        "lipschitz",
        "metrics",
        "models",
        "parallel",
        "train",
)

__all__ = list(_SUBMODULES) + ["__version__", "enable_compilation_cache", "xla_cpu"]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"advjax.{name}")
    if name == "enable_compilation_cache":
        return importlib.import_module("advjax.compilation_cache").enable_compilation_cache
    raise AttributeError(f"module 'advjax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
