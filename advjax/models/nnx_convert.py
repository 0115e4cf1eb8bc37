"""Weight conversion between the linen zoo models and their NNX twins, in both directions.

The twins (:mod:`advjax.models.nnx_zoo`) carry the linen parameter names, so conversion is a
structure-checked copy of ``{"params", "batch_stats"}`` dicts:

- :func:`nnx_from_linen`: linen module + variables (e.g. from :func:`advjax.models.load_lenet5`
  or :func:`advjax.models.load_woods2019`) → the NNX twin holding the same weights;
- :func:`linen_from_nnx`: NNX twin → ``(linen module, variables)``;
- :func:`set_nnx_variables`: write linen-layout variables into any NNX module whose attribute names
  match (in place), checking every path and shape.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, traverse_util

from advjax.models.cnn import LeNet5, MnistCNN
from advjax.models.nnx_adapters import _check_module, nnx_variables
from advjax.models.nnx_zoo import NNXLeNet5, NNXMnistCNN, NNXPreActResNet
from advjax.models.resnet import PreActResNet


def _flat(tree: Mapping[str, Any]) -> dict[tuple, Any]:
    return traverse_util.flatten_dict(dict(tree)) if tree else {}


def set_nnx_variables(model: nnx.Module, variables: Mapping[str, Any]) -> nnx.Module:
    """Writes linen-layout ``variables`` into ``model`` in place and returns it.

    Args:
      model: an ``nnx.Module`` whose :func:`advjax.models.nnx_variables` has the same paths and
        shapes as ``variables`` (the zoo twins and their linen models do).
      variables: ``{"params": ..., "batch_stats": ...}`` (``batch_stats`` required exactly when
        the model has BatchNorm statistics); arrays are converted with ``jnp.asarray`` and cast to
        the dtype of the model's variable.

    Returns:
      ``model``, now holding ``variables``.

    Raises:
      ValueError: when a collection, a path or a shape differs (the first differences are named).
    """
    _check_module(model)
    current = nnx_variables(model)
    given = {k: v for k, v in dict(variables).items() if k in ("params", "batch_stats") and v}
    if set(given) != set(current):
        raise ValueError(f"`variables` must have collections {sorted(current)}; got "
                         f"{sorted(given)}.")
    for col in current:
        want, got = _flat(current[col]), _flat(given[col])
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        if missing or extra:
            raise ValueError(f"`variables[{col!r}]` does not match the model: missing "
                             f"{['/'.join(map(str, p)) for p in missing[:5]]}, unexpected "
                             f"{['/'.join(map(str, p)) for p in extra[:5]]}.")
        bad = [p for p in want if tuple(want[p].shape) != tuple(jnp.shape(got[p]))]
        if bad:
            p = bad[0]
            raise ValueError(f"`variables[{col!r}]` {'/'.join(map(str, p))} has shape "
                             f"{tuple(jnp.shape(got[p]))}; the model expects "
                             f"{tuple(want[p].shape)}.")
    _, params, stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    for state, col in ((params, "params"), (stats, "batch_stats")):
        if col not in current:
            continue
        template = current[col]
        cast = jax.tree.map(lambda t, a: jnp.asarray(a, t.dtype), template,
                            traverse_util.unflatten_dict(_flat(given[col])))
        nnx.replace_by_pure_dict(state, cast)
        nnx.update(model, state)
    return model


def nnx_from_linen(module: Any, variables: Mapping[str, Any], *,
                   rngs: nnx.Rngs | None = None) -> nnx.Module:
    """The NNX twin of a zoo linen module, holding the same weights (outputs equal).

    Args:
      module: a :class:`~advjax.models.MnistCNN`, :class:`~advjax.models.LeNet5` or
        :class:`~advjax.models.PreActResNet` (any settings).
      variables: its variables (``{"params": ...}``, plus ``"batch_stats"`` for the ResNet).
      rngs: optional ``nnx.Rngs`` for an initialisation that is then overwritten; by default the
        twin is built abstractly (``nnx.eval_shape``), which skips the initialisers.

    Returns:
      An :class:`NNXMnistCNN`, :class:`NNXLeNet5` or :class:`NNXPreActResNet` in training mode
      (call ``.eval()``, or use :func:`advjax.models.nnx_logits_fn`, for inference).
    """
    params = variables["params"]
    if isinstance(module, MnistCNN):
        # Dense_0 sees (H // 4) (W // 4) features[1] inputs; any square input with that pooled
        # size gives the same parameter shapes and the same function.
        conv0 = jnp.shape(params["Conv_0"]["kernel"])
        cells = jnp.shape(params["Dense_0"]["kernel"])[0] // int(module.features[1])
        side = int(round(cells ** 0.5))
        if side * side != cells:
            raise ValueError(f"`variables`: Dense_0 input size {cells} · features[1] is not a "
                             "square map; build NNXMnistCNN with its input_shape directly.")
        make = functools.partial(NNXMnistCNN, module.features, module.dense, module.num_classes,
                                 module.activation, (4 * side, 4 * side, conv0[2]))
    elif isinstance(module, LeNet5):
        make = functools.partial(NNXLeNet5, module.num_classes)
    elif isinstance(module, PreActResNet):
        make = functools.partial(NNXPreActResNet, module.depth, module.num_classes,
                                 module.widths, module.strides, module.activation,
                                 module.hhrelu_delta, module.axis_name, module.mean, module.std)
    else:
        raise TypeError("`module` must be an advjax MnistCNN, LeNet5 or PreActResNet; got "
                        f"{type(module).__name__}.")
    if rngs is None:
        # Every array of the twin is overwritten: build it abstractly (no initialisers run).
        model = nnx.eval_shape(lambda: make(rngs=nnx.Rngs(0)))
    else:
        model = make(rngs=rngs)
    model = set_nnx_variables(model, variables)
    leftover = [a for a in jax.tree.leaves(nnx.state(model))
                if isinstance(a, jax.ShapeDtypeStruct)]
    if leftover:  # pragma: no cover - the twins hold only Param and BatchStat arrays
        raise RuntimeError("internal: the NNX twin kept uninitialised state.")
    return model


def linen_from_nnx(model: nnx.Module) -> tuple[Any, dict[str, dict]]:
    """The linen zoo module and variables of an NNX twin (the inverse of :func:`nnx_from_linen`).

    Args:
      model: an :class:`NNXMnistCNN`, :class:`NNXLeNet5` or :class:`NNXPreActResNet`.

    Returns:
      ``(module, variables)`` with ``module.apply(variables, x, train=False)`` equal to the NNX
      model in eval mode.
    """
    variables = nnx_variables(model)
    if isinstance(model, NNXMnistCNN):
        module = MnistCNN(features=(model.Conv_0.out_features, model.Conv_1.out_features),
                          dense=model.Dense_0.out_features, num_classes=model.Dense_1.out_features,
                          activation=model.activation)
    elif isinstance(model, NNXLeNet5):
        module = LeNet5(num_classes=model.linear2.out_features)
    elif isinstance(model, NNXPreActResNet):
        module = PreActResNet(depth=model.depth, num_classes=model.num_classes,
                              widths=model.widths, strides=model.strides,
                              activation=model.activation, hhrelu_delta=model.hhrelu_delta,
                              axis_name=model.axis_name, mean=model.mean, std=model.std)
    else:
        raise TypeError("`model` must be an NNXMnistCNN, NNXLeNet5 or NNXPreActResNet; got "
                        f"{type(model).__name__}.")
    return module, variables
