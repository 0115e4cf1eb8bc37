"""Torch-free import of RobustBench-style PyTorch checkpoints into the Flax architectures.

:func:`read_state_dict` reads one file with :func:`advjax.models.torch_legacy.load_torch` (zip or
legacy format, restricted unpickler: no torch, no pickled code run) and returns a flat
``{key: array}`` plus the file's SHA-256. It

- descends the usual nesting: ``{"state_dict": ...}``, ``{"model_state_dict": ...}``,
  ``{"model": ...}``, ``{"net": ...}`` (other entries such as ``epoch`` are ignored);
- strips the ``module.`` prefix of ``DataParallel`` and a ``model.`` prefix common to every key;
- unwraps RobustBench's ``normalize_model`` wrapper (``nn.Sequential(ImageNormalizer, model)``:
  keys ``normalize.mean``/``normalize.std``/``model.<key>``, or positional ``0.mean``/``0.std``/
  ``1.<key>``, after any ``module.``/``model.`` prefix) and returns its mean and std;
- refuses, naming the file, anything that is not a checkpoint (an HTML page saved by a failed
  download is recognised).

:func:`variables_from_state_dict` maps it onto a module whose submodule names are the PyTorch
prefixes: for every Flax leaf of ``jax.eval_shape(module.init, ...)`` (no allocation) the PyTorch
key is the path joined by dots with ``kernel``/``scale`` → ``weight``, ``mean``/``var`` (in
``batch_stats``) → ``running_mean``/``running_var``; convolution kernels OIHW → HWIO (depthwise
``(C, 1, kh, kw)`` → ``(kh, kw, 1, C)``), dense kernels ``(out, in)`` → ``(in, out)``.
Every shape is checked and every key must be used (``num_batches_tracked`` and the architecture's
``ignored_keys`` excepted), so a wrong architecture fails loudly instead of loading half a model.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from advjax.models.torch_legacy import load_torch

NESTING_KEYS = ("state_dict", "model_state_dict", "model", "net")

# Harmless globals that training checkpoints pickle beside the weights (the run's argparse
# arguments, numpy scalars such as a best accuracy): read as inert placeholders, never imported.
DEFAULT_STUBS = (
    ("argparse", "Namespace"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "dtype"),
)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
            isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


def _unnest(obj: Any, where: str) -> dict[str, np.ndarray]:
    for _ in range(4):
        if _is_state_dict(obj):
            return dict(obj)
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in NESTING_KEYS if k in obj and isinstance(obj[k], Mapping)),
                     None)
        if inner is None:
            break
        obj = inner
    kind = f"keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else type(obj).__name__
    raise ValueError(f"{where!r} holds no state dict of arrays (looked under {NESTING_KEYS}); "
                     f"found {kind}.")


def _strip_prefixes(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    changed = True
    while changed:
        changed = False
        for prefix in ("module.", "model."):
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


# (normaliser prefix, model prefix) of RobustBench's normalize_model wrapper: the current
# nn.Sequential(OrderedDict(normalize=..., model=...)) and the older positional nn.Sequential.
NORMALIZER_PREFIXES = (("normalize.", "model."), ("0.", "1."))


def _unwrap_normalizer(state: dict[str, np.ndarray], where: str
                       ) -> tuple[dict[str, np.ndarray], tuple[float, ...] | None,
                                  tuple[float, ...] | None]:
    for norm, body in NORMALIZER_PREFIXES:
        if f"{norm}mean" not in state or f"{norm}std" not in state:
            continue
        rest = {k: v for k, v in state.items() if k not in (f"{norm}mean", f"{norm}std")}
        if not all(k.startswith(body) for k in rest):
            raise ValueError(f"{where!r}: keys '{norm}mean'/'{norm}std' of a normalize_model "
                             f"wrapper, but other keys do not start with {body!r}: "
                             f"{sorted(rest)[:5]}.")
        mean = tuple(float(v) for v in np.asarray(state[f"{norm}mean"], np.float64).reshape(-1))
        std = tuple(float(v) for v in np.asarray(state[f"{norm}std"], np.float64).reshape(-1))
        return _strip_prefixes({k[len(body):]: v for k, v in rest.items()}), mean, std
    return state, None, None


def read_state_dict(path: str | os.PathLike, *, stubs: Sequence[tuple[str, str]] = DEFAULT_STUBS
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read one RobustBench-style checkpoint file (see the module docstring).

    Args:
      path: a ``torch.save`` file (zip or legacy format).
      stubs: ``(module, name)`` globals read as inert placeholders (default
        :data:`DEFAULT_STUBS`); any other global is refused.

    Returns:
      ``(state_dict, info)``: the flat ``{key: numpy array}`` with prefixes and wrappers removed,
      and ``info`` with ``sha256`` (hex digest of the file's bytes), ``mean`` and ``std`` (tuples
      from a ``normalize_model`` wrapper, else ``None``).

    Raises:
      ValueError: naming the file, when it is not a checkpoint (e.g. an HTML page) or holds no
        state dict.
      pickle.UnpicklingError: the pickle references a global outside the reader's allow-list.
    """
    where = os.fspath(path)
    with open(where, "rb") as fh:
        data = fh.read()
    sha = hashlib.sha256(data).hexdigest()
    obj = load_torch(data, name=where, stubs=stubs)
    state = _strip_prefixes(_unnest(obj, where))
    state, mean, std = _unwrap_normalizer(state, where)
    return state, {"sha256": sha, "mean": mean, "std": std, "path": where}


def _default_input_shape(module: nn.Module) -> tuple[int, int, int]:
    """``(S, S, 3)`` with ``S`` the module's ``image_size`` attribute or ``input_size``."""
    size = getattr(module, "image_size", None) or getattr(module, "input_size", 32)
    return (int(size), int(size), 3)


def _torch_key(collection: str, path: tuple[str, ...]) -> str:
    *mods, leaf = path
    if collection == "batch_stats":
        leaf = {"mean": "running_mean", "var": "running_var"}.get(leaf, leaf)
    elif leaf in ("kernel", "scale"):
        leaf = "weight"
    return ".".join((*mods, leaf))


def _to_flax(leaf: str, value: np.ndarray) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return np.transpose(value, (2, 3, 1, 0))
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


def variables_from_state_dict(module: nn.Module, state: Mapping[str, np.ndarray],
                              *, input_shape: Sequence[int] | None = None,
                              ignored_keys: Sequence[str] = ()) -> dict[str, Any]:
    """Flax variables of ``module`` from a PyTorch ``state_dict`` (see the module docstring).

    Args:
      module: a linen module whose submodule names are the PyTorch prefixes (the architectures of
        :mod:`advjax.models.robustbench`).
      state: flat ``{key: array}`` (prefixes already stripped, e.g. by :func:`read_state_dict`).
      input_shape: one input ``(H, W, C)`` (default: ``module.image_size`` or
        ``module.input_size``, square RGB).
      ignored_keys: key prefixes of the PyTorch model that the forward pass never reads.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` (``batch_stats`` only if the module has BatchNorm) of
      float32 numpy arrays, ready for ``module.apply``.

    Raises:
      ValueError: naming every missing key, unexpected key, or shape mismatch.
    """
    if input_shape is None:
        input_shape = _default_input_shape(module)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0),
                                                jnp.zeros((1, *input_shape), jnp.float32)))
    ignored = tuple(ignored_keys) + tuple(getattr(module, "ignored_keys", ()))
    used: set[str] = set()
    errors: list[str] = []
    out: dict[str, Any] = {}
    for collection, tree in shapes.items():
        flat = {}
        for kpath, spec in jax.tree_util.tree_leaves_with_path(tree):
            path = tuple(k.key for k in kpath)
            key = _torch_key(collection, path)
            if key not in state:
                errors.append(f"missing {key!r} (Flax {collection}/{'/'.join(path)}, shape "
                              f"{tuple(spec.shape)})")
                continue
            used.add(key)
            value = _to_flax(path[-1], np.asarray(state[key]))
            if tuple(value.shape) != tuple(spec.shape):
                errors.append(f"{key!r}: shape {tuple(np.shape(state[key]))} → "
                              f"{tuple(value.shape)} does not match Flax {tuple(spec.shape)}")
                continue
            flat[path] = np.ascontiguousarray(value, dtype=np.float32)
        out[collection] = _unflatten(flat)
    unused = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked")
                    and not k.startswith(ignored))
    if unused:
        errors.append(f"unexpected keys {unused[:10]}{' ...' if len(unused) > 10 else ''}")
    if errors:
        raise ValueError(f"the checkpoint does not fit {type(module).__name__}: "
                         + "; ".join(errors[:12]) + ("; ..." if len(errors) > 12 else ""))
    return out


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return tree


def count_params(module: nn.Module, input_shape: Sequence[int] | None = None) -> int:
    """Number of trainable parameters of ``module`` from ``jax.eval_shape`` (nothing allocated)."""
    if input_shape is None:
        input_shape = _default_input_shape(module)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0),
                                                jnp.zeros((1, *input_shape), jnp.float32)))
    return int(sum(np.prod(s.shape, dtype=np.int64)
                   for s in jax.tree_util.tree_leaves(shapes.get("params", {}))))
