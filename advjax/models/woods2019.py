"""Import of the pretrained CIFAR-10 ResNet-44 checkpoints of Woods, Chen & Teuscher (2019).

The four files of ``woods2019-resnet44/`` (papers.md §2.2 "Prebuilt networks", §2.3, §2.12) are
legacy ``torch.save`` pickles of ``{"model_params": state_dict, "training_options": dict}``. They
are read with :func:`advjax.models.torch_legacy.load_legacy_torch` (no torch, no pickled code
executed; the ``__main__.cifar10_preprocess`` reference in ``training_options["arch"]`` is stubbed)
and converted to :class:`~advjax.models.PreActResNet` variables:

- ``pipe.0`` stem conv → ``stem``; ``pipe.{1,2,3}.{j}`` → ``stage{1,2,3}_block{j}`` (``pre.0`` →
  ``pre_bn``, ``main.0`` → ``conv1``, ``main.1`` → ``bn``, ``main.3`` → ``conv2``, ``shortcut`` →
  ``shortcut``); ``pipe.4`` → ``final_bn``; ``pipe.7`` → ``classifier``;
- conv weights OIHW → HWIO; BN ``weight``/``bias`` → ``scale``/``bias`` in ``params`` and
  ``running_mean``/``running_var`` → ``mean``/``var`` in ``batch_stats``;
- the activation is HHReLU when the checkpoint holds HHReLU buffers ``d`` (the "robust additions"
  nets: 43 buffers, all 0.5), ReLU otherwise; ``input_offset`` (mean; std) sets the model's input
  normalisation.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advjax.data.local import resolve_data_path
from advjax.models.resnet import PreActResNet
from advjax.models.torch_legacy import StubGlobal, load_legacy_torch

logger = logging.getLogger(__name__)

PREPROCESS_STUB = ("__main__", "cifar10_preprocess")

# Published numbers of the released networks (papers.md §2.2; on 1000 CIFAR-10 test images).
WOODS2019_CHECKPOINTS = {
    "resnet44-standard.pt": {"test_acc": 0.9384, "attack_ara": 0.0013, "btr_ara": 0.0015},
    "resnet44-adv-train.pt": {"test_acc": 0.8643, "attack_ara": 0.0100, "btr_ara": 0.0157},
    "resnet44-all.pt": {"test_acc": 0.679, "attack_ara": 0.0188, "btr_ara": 0.0414, "psi": 14240},
    "resnet44-robust.pt": {"test_acc": 0.6758, "attack_ara": 0.0142, "btr_ara": 0.0395,
                           "psi": 33778},
}

_BLOCK = re.compile(r"pipe\.([123])\.(\d+)\.(.+)$")
_BLOCK_PARTS = {"pre.0": "pre_bn", "main.0": "conv1", "main.1": "bn", "main.3": "conv2",
                "shortcut": "shortcut"}
_TOP_PARTS = {"pipe.0": "stem", "pipe.4": "final_bn", "pipe.7": "classifier"}


@dataclasses.dataclass(frozen=True)
class Woods2019Checkpoint:
    """A converted checkpoint.

    Attributes:
      module: the :class:`PreActResNet` (activation, depth, widths and normalisation as stored).
      variables: ``{"params": ..., "batch_stats": ...}`` with float32 numpy leaves.
      metadata: the checkpoint's ``training_options`` as plain data (the stubbed preprocess class is
        replaced by the string ``"__main__.cifar10_preprocess"``), e.g. ``robust_additions``,
        ``adversarial_training``, ``l2_min``, ``arch``, ``input_offset`` and, for robust nets,
        ``robust_integration`` (208.512 for ``all``, 251.697 for ``robust``; ψ = 220·exp(0.02·I)).
    """

    module: PreActResNet
    variables: dict[str, Any]
    metadata: dict[str, Any]


def _plain(obj: Any) -> Any:
    if isinstance(obj, type) and issubclass(obj, StubGlobal):
        return f"{obj.module}.{obj.name}"
    if isinstance(obj, StubGlobal):
        return f"{obj.module}.{obj.name}"
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def _hwio(w: np.ndarray, key: str) -> np.ndarray:
    if w.ndim != 4:
        raise ValueError(
                f"checkpoint entry {key!r} must be an OIHW conv weight; got shape {w.shape}.")
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0).astype(np.float32))


def woods2019_variables_from_state(state: dict[str, np.ndarray]) -> tuple[PreActResNet, dict]:
    """Module and Flax variables from a Woods et al. ResNet ``state_dict`` (numpy arrays).

    Args:
      state: the checkpoint's ``model_params`` (PyTorch names ``pipe.*`` and ``input_offset``).

    Returns:
      ``(module, {"params": ..., "batch_stats": ...})``.

    Raises:
      ValueError / KeyError: unknown or missing entries, shapes that do not match the module's own
      parameter tree, non-finite values, or unequal HHReLU widths.
    """
    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    deltas: list[float] = []
    blocks: dict[int, set[int]] = {1: set(), 2: set(), 3: set()}
    mean, std = None, None

    def put(tree: dict, path: tuple[str, ...], leaf: str, value: np.ndarray) -> None:
        node = tree
        for p in path:
            node = node.setdefault(p, {})
        if leaf in node:
            raise ValueError(f"checkpoint maps twice to {'/'.join(path + (leaf,))}.")
        node[leaf] = value

    for key, value in state.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise ValueError(f"checkpoint entry {key!r} contains NaN or infinite values.")
        if key == "input_offset":
            if value.shape != (2, 3):
                raise ValueError(f"`input_offset` must have shape (2, 3); got {value.shape}.")
            mean = tuple(float(v) for v in value[0])
            std = tuple(float(v) for v in value[1])
            continue
        m = _BLOCK.match(key)
        if m:
            stage, block, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            blocks[stage].add(block)
            path_prefix: tuple[str, ...] = (f"stage{stage}_block{block}",)
            part, _, leaf = rest.rpartition(".")
            if part in ("pre.1", "main.2") and leaf == "d":
                deltas.append(float(value))
                continue
            if part not in _BLOCK_PARTS:
                raise KeyError(f"unknown checkpoint entry {key!r}.")
            name = _BLOCK_PARTS[part]
        else:
            part, _, leaf = key.rpartition(".")
            if part == "pipe.5" and leaf == "d":
                deltas.append(float(value))
                continue
            if part not in _TOP_PARTS:
                raise KeyError(f"unknown checkpoint entry {key!r}.")
            path_prefix, name = (), _TOP_PARTS[part]
        path = path_prefix + (name,)
        is_conv = name in ("stem", "conv1", "conv2", "shortcut", "classifier")
        if leaf == "num_batches_tracked":
            continue
        if is_conv and leaf == "weight":
            put(params, path, "kernel", _hwio(value, key))
        elif is_conv and leaf == "bias" and name == "classifier":
            put(params, path, "bias", value.astype(np.float32))
        elif not is_conv and leaf in ("weight", "bias"):
            put(params, path, "scale" if leaf == "weight" else "bias", value.astype(np.float32))
        elif not is_conv and leaf in ("running_mean", "running_var"):
            put(stats, path, "mean" if leaf == "running_mean" else "var", value.astype(np.float32))
        else:
            raise KeyError(f"unknown checkpoint entry {key!r}.")

    counts = {len(b) for b in blocks.values()}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"superblocks must hold the same positive number of blocks; got "
                         f"{ {s: len(b) for s, b in blocks.items()} }.")
    n = counts.pop()
    if any(sorted(b) != list(range(n)) for b in blocks.values()):
        raise ValueError("block indices of a superblock must be 0 … n-1.")
    if deltas:
        if len(set(deltas)) != 1:
            raise ValueError(f"HHReLU buffers `d` must all be equal; got {sorted(set(deltas))}.")
        if len(deltas) != 6 * n + 1:
            raise ValueError(f"expected {6 * n + 1} HHReLU buffers (one per activation); got "
                             f"{len(deltas)}.")
    if mean is None:
        raise KeyError("checkpoint lacks `input_offset` (input normalisation mean and std).")
    if "stem" not in params or "classifier" not in params:
        raise KeyError("checkpoint lacks the stem (`pipe.0`) or classifier (`pipe.7`) weights.")
    widths = tuple(int(params[f"stage{s}_block0"]["conv1"]["kernel"].shape[-1]) for s in (1, 2, 3))
    module = PreActResNet(
            depth=6 * n + 2, num_classes=int(params["classifier"]["kernel"].shape[-1]),
            widths=widths, activation="hhrelu" if deltas else "relu",
            hhrelu_delta=deltas[0] if deltas else 0.5, mean=mean, std=std)
    variables = {"params": params, "batch_stats": stats}
    _check_structure(module, variables)
    return module, variables


def _read(path: str | os.PathLike) -> dict[str, Any]:
    obj = load_legacy_torch(resolve_data_path(path), stubs=[PREPROCESS_STUB])
    if not isinstance(obj, dict) or "model_params" not in obj:
        raise ValueError(
                f"{os.fspath(path)!r} holds no `model_params` (not a Woods 2019 checkpoint).")
    return obj


def load_woods2019_checkpoint(path: str | os.PathLike) -> Woods2019Checkpoint:
    """Module, variables and ``training_options`` of a Woods et al. (2019) checkpoint.

    Args:
      path: one of ``woods2019-resnet44/resnet44-{standard,adv-train,all,robust}.pt``; a
        relative path is looked up in the working directory, then under ``$ADVJAX_DATA_DIR``.

    Returns:
      A :class:`Woods2019Checkpoint`.
    """
    obj = _read(path)
    module, variables = woods2019_variables_from_state(obj["model_params"])
    metadata = _plain(obj.get("training_options", {}))
    robust = metadata.get("robust_additions")
    if robust is not None and bool(robust) != (module.activation == "hhrelu"):
        logger.warning("%s: training_options robust_additions=%s but the activation found is %s.",
                       os.fspath(path), robust, module.activation)
    return Woods2019Checkpoint(module, variables, metadata)


def _check_structure(module: PreActResNet, variables: dict[str, Any]) -> None:
    expected = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                                  train=False))
    want = {jax.tree_util.keystr(p): tuple(x.shape)
            for p, x in jax.tree_util.tree_leaves_with_path(expected)}
    got = {jax.tree_util.keystr(p): tuple(np.shape(x))
           for p, x in jax.tree_util.tree_leaves_with_path(variables)}
    if want != got:
        missing = sorted(set(want) - set(got))[:5]
        extra = sorted(set(got) - set(want))[:5]
        wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])[:5]
        raise ValueError(f"converted checkpoint does not match {module!r}: missing {missing}, "
                         f"unexpected {extra}, wrong shapes {wrong}.")


def load_woods2019(path: str | os.PathLike) -> tuple[PreActResNet, dict[str, Any]]:
    """A pretrained Woods et al. (2019) CIFAR-10 ResNet-44 as ``(module, variables)``.

    Loads the legacy PyTorch checkpoint without torch and without executing pickled code.

    Args:
      path: one of ``woods2019-resnet44/resnet44-{standard,adv-train,all,robust}.pt``; a
        relative path is looked up in the working directory, then under ``$ADVJAX_DATA_DIR``.

    Returns:
      ``(module, variables)``: ``module.apply(variables, x, train=False)`` maps ``(B, 32, 32, 3)``
      images in [0, 1] (NHWC, un-normalised) to logits ``(B, 10)``.
    """
    ckpt = load_woods2019_checkpoint(path)
    return ckpt.module, ckpt.variables


def load_woods2019_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's ``training_options`` as plain data (see :class:`Woods2019Checkpoint`).

    Args:
      path: one of ``woods2019-resnet44/resnet44-{standard,adv-train,all,robust}.pt``; a
        relative path is looked up in the working directory, then under ``$ADVJAX_DATA_DIR``.

    Returns:
      A JSON-serialisable dict, e.g. ``{"robust_additions": True, "adversarial_training": False,
      "l2_min": False, "arch": [32, "__main__.cifar10_preprocess", [7, 7, 7], [16, 32, 64], 10],
      "input_offset": [[0.4914, ...], [0.247, ...]], "robust_integration": 251.697...}``.
    """
    return _plain(_read(path).get("training_options", {}))
