"""Import of advertorch's trained MNIST ``LeNet5`` weights (``advertorch-lenet5/lenet5_mnist.npz``).

The archive holds the PyTorch state dicts of ``mnist_lenet5_clntrained`` and
``mnist_lenet5_advtrained`` (see that folder's README). Conversion to
:class:`~advjax.models.LeNet5`:

- conv weights OIHW → HWIO;
- linear weights ``(out, in)`` → Dense kernels ``(in, out)``;
- ``linear1`` reads PyTorch's flatten of a ``(C, H, W) = (64, 7, 7)`` map, the Flax model flattens
  ``(H, W, C)``: its input rows are permuted from C,H,W order to H,W,C order.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from advjax.data._types import DataNotFoundError
from advjax.data.local import resolve_data_path
from advjax.models.cnn import LeNet5

LENET5_VARIANTS = ("clntrained", "advtrained")

_SHAPES = {
    "conv1.weight": (32, 1, 3, 3),
    "conv1.bias": (32,),
    "conv2.weight": (64, 32, 3, 3),
    "conv2.bias": (64,),
    "linear1.weight": (200, 3136),
    "linear1.bias": (200,),
    "linear2.weight": (10, 200),
    "linear2.bias": (10,),
}


def lenet5_variables_from_torch(state: dict[str, np.ndarray]) -> dict[str, Any]:
    """Flax variables of :class:`LeNet5` from a PyTorch ``LeNet5`` state dict (numpy arrays).

    Args:
      state: ``{"conv1.weight": (32, 1, 3, 3), "conv1.bias": (32,), "conv2.weight": (64, 32, 3, 3),
        "conv2.bias": (64,), "linear1.weight": (200, 3136), "linear1.bias": (200,),
        "linear2.weight": (10, 200), "linear2.bias": (10,)}``, float.

    Returns:
      ``{"params": {...}}`` with float32 numpy leaves, for ``LeNet5().apply``.
    """
    for key, shape in _SHAPES.items():
        if key not in state:
            raise KeyError(f"`state` lacks {key!r}; expected the keys {sorted(_SHAPES)}.")
        if tuple(np.shape(state[key])) != shape:
            raise ValueError(
                    f"`state[{key!r}]` must have shape {shape}; got {np.shape(state[key])}.")
        if not np.all(np.isfinite(state[key])):
            raise ValueError(f"`state[{key!r}]` contains NaN or infinite values.")
    f32 = {k: np.asarray(state[k], np.float32) for k in _SHAPES}
    # linear1: rows indexed by c*49 + h*7 + w (PyTorch) → h*7*64 + w*64 + c (NHWC flatten).
    w1 = f32["linear1.weight"].reshape(200, 64, 7, 7).transpose(2, 3, 1, 0).reshape(3136, 200)
    return {"params": {
        "conv1": {"kernel": f32["conv1.weight"].transpose(2, 3, 1, 0), "bias": f32["conv1.bias"]},
        "conv2": {"kernel": f32["conv2.weight"].transpose(2, 3, 1, 0), "bias": f32["conv2.bias"]},
        "linear1": {"kernel": np.ascontiguousarray(w1), "bias": f32["linear1.bias"]},
        "linear2": {"kernel": np.ascontiguousarray(f32["linear2.weight"].T),
                    "bias": f32["linear2.bias"]},
    }}


def load_lenet5_state(path: str | os.PathLike, which: str = "clntrained") -> dict[str, np.ndarray]:
    """The raw PyTorch state dict (numpy arrays, PyTorch layouts) of one advertorch LeNet5.

    Args:
      path: ``lenet5_mnist.npz``, or the folder holding it; a relative path is looked up in the
        working directory, then under ``$ADVJAX_DATA_DIR`` (``advjax.data.resolve_data_path``).
      which: ``"clntrained"`` (clean training) or ``"advtrained"`` (PGD adversarial training).

    Returns:
      ``{"conv1.weight": ..., ...}`` as stored (no pickled objects are loaded).
    """
    if which not in LENET5_VARIANTS:
        raise ValueError(f"`which` must be one of {LENET5_VARIANTS}; got {which!r}.")
    path = os.fspath(resolve_data_path(path))
    if os.path.isdir(path):
        path = os.path.join(path, "lenet5_mnist.npz")
    if not os.path.isfile(path):
        raise DataNotFoundError(
                f"`path` must be lenet5_mnist.npz or its folder; {path!r} not found.")
    prefix = f"mnist_lenet5_{which}/"
    with np.load(path, allow_pickle=False) as archive:
        state = {k[len(prefix):]: archive[k] for k in archive.files if k.startswith(prefix)}
    if not state:
        raise KeyError(f"{path!r} holds no arrays under {prefix!r}.")
    return state


def load_lenet5(
    path: str | os.PathLike, which: str = "clntrained",
) -> tuple[LeNet5, dict[str, Any]]:
    """advertorch's trained MNIST LeNet5 as ``(module, variables)``.

    Args:
      path: ``advertorch-lenet5/lenet5_mnist.npz`` (or its folder); a relative path is looked up
        in the working directory, then under ``$ADVJAX_DATA_DIR``.
      which: ``"clntrained"`` (published clean accuracy 98.89 %) or ``"advtrained"`` (98.64 %;
        L∞ PGD eps 0.3 robust accuracy 93.2 %).

    Returns:
      ``(LeNet5(), {"params": ...})``; ``module.apply(variables, x)`` maps ``(B, 28, 28, 1)`` images
      in [0, 1] to logits ``(B, 10)``.
    """
    return LeNet5(), lenet5_variables_from_torch(load_lenet5_state(path, which))
