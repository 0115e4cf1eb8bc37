"""Defences that mask gradients, with their BPDA twins and a known true robustness.

Each constructor wraps an undefended per-example ``logits_fn(x) -> (K,)`` (or, for k-WTA, the two
halves of a network) and returns a :class:`MaskedDefence`:

* ``defended``: the model as a user would deploy it; its input gradient is zero almost everywhere
  (rounding, thresholds, ``argmax``) or follows a shattered, discontinuous function (k-WTA), so a
  gradient attack reports a robust accuracy far above the truth;
* ``bpda``: the same values (bitwise: the same operations, :func:`advjax.attacks.bpda`) with the
  non-differentiable part's derivative replaced by a surrogate's, so a gradient attack sees
  through the mask;
* ``undefended``: the model whose robust accuracy is the truth (or brackets it, as each docstring
  states).

The defences and their truths (``L`` levels, pixels in [0, 1], L∞ budget ``eps``):

* :func:`quantized`: ``f(round(x (L-1)) / (L-1))``; truth: ``f``'s robust accuracy up to the
  pixel shift ``1/(2(L-1))`` (between ``f``'s at ``eps - 1/(2(L-1))`` and ``eps + 1/(2(L-1))``);
* :func:`thermometer` (Buckman et al. 2018): ``f(mean_k [x >= k/L])``, the floor-quantised ``f``
  exactly; truth: ``f``'s up to the pixel shift ``1/L``;
* :func:`argmax_inside`: ``scale · onehot(argmax f(x))``; truth: ``f``'s, exactly;
* :func:`kwta` / :func:`kwta_lenet5` (Xiao et al. 2020): top-k of a hidden layer; no closed form
  (the best known value, an upper bound: see :func:`kwta`);
* :func:`mask_gradients`: ``f`` with zero gradient; truth: ``f``'s, exactly.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from advjax.attacks.bpda import bpda
from advjax.models.pooling import max_pool_2x2

Array = jax.Array
LogitsFn = Callable[[Array], Array]

__all__ = [
    "KWTALeNet5",
    "MaskedDefence",
    "argmax_inside",
    "kwta",
    "kwta_lenet5",
    "mask_gradients",
    "quantize",
    "quantized",
    "sparsify",
    "thermometer",
    "thermometer_encode",
    "thermometer_quantize",
    "thermometer_soft",
]


class MaskedDefence(NamedTuple):
    """A gradient-masking defence, its BPDA twin and the model that gives its truth.

    Attributes:
      defended: per-example ``x -> logits (K,)`` as deployed (masked gradients).
      bpda: per-example ``x -> logits (K,)``; the same values as ``defended`` bit for bit, with
        surrogate derivatives through the masking part.
      undefended: the per-example model whose robust accuracy is (or brackets) the truth.
    """

    defended: LogitsFn
    bpda: LogitsFn
    undefended: LogitsFn


def _check_fn(fn, name: str) -> None:
    if not callable(fn):
        raise ValueError(f"`{name}` must be a callable per-example function; got "
                         f"{type(fn).__name__}.")


def _check_levels(levels, name: str = "levels") -> int:
    try:
        value = operator.index(levels)
    except TypeError:
        raise ValueError(f"`{name}` must be an integer >= 2; got {levels!r}.") from None
    if value < 2:
        raise ValueError(f"`{name}` must be an integer >= 2; got {value}.")
    return value


# ----------------------------------------------------------------------------- quantisation

def quantize(x: Array, levels: int) -> Array:
    """``round(x (L-1)) / (L-1)``: ``x`` in [0, 1] onto ``L`` equally spaced levels.

    Moves every pixel of ``x`` in [0, 1] by at most ``1 / (2 (L-1))``; its derivative is zero
    almost everywhere.
    """
    n = _check_levels(levels) - 1
    return jnp.round(x * n) / n


def quantized(logits_fn: LogitsFn, levels: int = 256) -> MaskedDefence:
    """Input quantisation (bit-depth reduction; Xu et al. 2018, Guo et al. 2018) before ``f``.

    ``defended(x) = f(quantize(x, L))``: rounding has zero derivative almost everywhere, so every
    gradient attack sees a zero gradient. ``bpda``: the straight-through surrogate (identity) for
    the rounding, i.e. the gradient of ``f`` at the quantised point.

    True robust accuracy at L∞ budget ``eps`` (``delta = 1 / (2 (L-1))``, the largest pixel
    move of the rounding): if ``||x' - x||∞ <= eps`` then ``||quantize(x') - x||∞ <= eps + delta``,
    so every example robust for ``f`` over the ``eps + delta`` ball (and with ``f(quantize(x)) =
    y``) is robust for the defence; the defence is thus no more robust than ``f`` "a delta
    further" and is ``f`` up to that shift: its robust accuracy lies near ``f``'s at ``eps``
    within the change of ``f``'s robust accuracy between ``eps - delta`` and ``eps + delta``
    (``delta`` = 0.002 for ``L = 256``). Measured: APGD-CE through the BPDA twin on the
    clean-trained MNIST LeNet5 (``eps = 0.1``, first 64 test images) gives 0.594 against 0.609 on
    ``f`` (1 example of 64), while APGD on ``defended`` stays at the clean 0.984
    (``tests/attacks/probe_masked_defences.py``).

    Args:
      logits_fn: undefended per-example ``x -> (K,)``, ``x`` in [0, 1].
      levels: ``L``, integer >= 2 (256: 8-bit images).
    """
    _check_fn(logits_fn, "logits_fn")
    levels = _check_levels(levels)
    q = bpda(lambda x: quantize(x, levels))   # straight-through: identity surrogate

    def defended(x):
        return logits_fn(quantize(x, levels))

    def twin(x):
        return logits_fn(q(x))

    return MaskedDefence(defended, twin, logits_fn)


# ----------------------------------------------------------------------------- thermometer

def thermometer_encode(x: Array, levels: int) -> Array:
    """The thermometer code of Buckman et al. (2018): ``(..., L)`` bits ``[x >= k / L]`` for
    ``k = 1..L`` (float, of ``x``'s dtype); zero derivative."""
    n = _check_levels(levels)
    thresholds = jnp.arange(1, n + 1, dtype=x.dtype) / n
    return (x[..., None] >= thresholds).astype(x.dtype)


def thermometer_soft(x: Array, levels: int) -> Array:
    """The soft thermometer code ``clip(L x - (k - 1), 0, 1)``, ``k = 1..L`` (``(..., L)``):
    piecewise linear in ``x``, equal to :func:`thermometer_encode` on the grid ``x = j / L``, and
    its mean over the last axis is ``x`` itself on [0, 1]."""
    n = _check_levels(levels)
    offsets = jnp.arange(n, dtype=x.dtype)
    return jnp.clip(n * x[..., None] - offsets, 0, 1)


def thermometer_quantize(x: Array, levels: int) -> Array:
    """The mean of the thermometer code: ``#{k in 1..L : x >= k/L} / L`` (``floor(L x) / L`` up
    to float rounding at the level boundaries); moves a pixel of [0, 1] down by less than
    ``1 / L``."""
    return jnp.mean(thermometer_encode(x, levels), axis=-1)


def thermometer(logits_fn: LogitsFn, levels: int = 16) -> MaskedDefence:
    """Thermometer encoding (Buckman et al. 2018) with a classifier that decodes it exactly.

    ``defended(x) = f(decode(thermometer_encode(x, L)))`` where ``decode`` is the classifier's
    linear first map on the ``(..., L)`` code: the mean over the code's axis (weights ``1/L``).
    The defended model therefore EQUALS the quantised model ``f(thermometer_quantize(x, L))`` on
    every input (same operations), and its true robust accuracy is that of ``f`` up to a pixel
    shift of less than ``1/L`` (as for :func:`quantized`, with ``delta = 1/L``). Its gradient is
    zero (the code is a step function of ``x``).

    ``bpda``: the hard code with the soft thermometer :func:`thermometer_soft` as surrogate (the
    BPDA of Athalye et al. 2018, §5.2): the gradient is that of ``f`` at the quantised point
    (the soft code's mean is the identity on [0, 1]).

    The shift matters for a coarse code: on the clean-trained MNIST LeNet5 (64 images, L∞
    ``eps = 0.1``, APGD-CE 20 steps) BPDA gives 0.609 with ``L = 256`` (``f``: 0.609) but 0.797
    with ``L = 16``, whose floor moves pixels by up to 0.0625, comparable to ``eps``: there ``f``'s
    figure is no tight truth (use a large ``L`` where the truth must be known).

    Args:
      logits_fn: undefended per-example ``x -> (K,)``, ``x`` in [0, 1].
      levels: ``L``, integer >= 2 (Buckman et al.: 16).
    """
    _check_fn(logits_fn, "logits_fn")
    levels = _check_levels(levels)
    code = bpda(lambda x: thermometer_encode(x, levels),
                surrogate=lambda x: thermometer_soft(x, levels))

    def defended(x):
        return logits_fn(jnp.mean(thermometer_encode(x, levels), axis=-1))

    def twin(x):
        return logits_fn(jnp.mean(code(x), axis=-1))

    return MaskedDefence(defended, twin, logits_fn)


# ----------------------------------------------------------------------------- argmax inside

def argmax_inside(logits_fn: LogitsFn, scale: float = 10.0) -> MaskedDefence:
    """A model that outputs ``scale · onehot(argmax f(x))``: zero gradient everywhere.

    Its prediction is ``f``'s at every input, so its set of adversarial points, and hence its
    TRUE robust accuracy, is exactly ``f``'s. (An attack's measured value can still differ from
    the same attack's on ``f``: the loss it follows is computed on the one-hot logits.)

    ``bpda``: the one-hot head with the soft-argmax surrogate ``scale · softmax(f(x))``. With an
    attack's loss ``L`` at the one-hot values ``h``, the gradient is ``J_f^T J_softmax^T
    dL/dh``; for a confident ``f`` and cross-entropy this is (up to a positive factor) the
    cross-entropy gradient of ``f`` itself, and for a targeted DLR loss the direction
    ``grad(f_t - f_y)``. (The identity surrogate, ``J_f^T dL/dh``, pushes all other logits
    equally: measured weaker, 0.78 against 0.69 robust accuracy of APGD-CE on the MNIST LeNet5,
    64 images, eps 0.1.) The loss VALUES stay flat until the prediction flips, which weakens
    APGD's step-size schedule: expect the BPDA figure slightly above ``f``'s under the same
    attack.

    Args:
      logits_fn: undefended per-example ``x -> (K,)``.
      scale: the logit of the predicted class (> 0, finite); the others are 0.
    """
    _check_fn(logits_fn, "logits_fn")
    if not (isinstance(scale, int | float) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"`scale` must be a finite number > 0; got {scale!r}.")

    def head(z):
        return jax.nn.one_hot(jnp.argmax(z), z.shape[-1], dtype=z.dtype) * jnp.asarray(
            scale, z.dtype)

    def soft_head(z):
        return jax.nn.softmax(z) * jnp.asarray(scale, z.dtype)

    marked = bpda(head, surrogate=soft_head)

    def defended(x):
        return head(logits_fn(x))

    def twin(x):
        return marked(logits_fn(x))

    return MaskedDefence(defended, twin, logits_fn)


# ----------------------------------------------------------------------------- zero gradient

def mask_gradients(logits_fn: LogitsFn) -> LogitsFn:
    """``logits_fn`` with the same values (bitwise) and a zero derivative everywhere.

    The masked twin of a model for transfer attacks: its robust accuracy is exactly
    ``logits_fn``'s, but a gradient attack on it sees only zeros.
    """
    _check_fn(logits_fn, "logits_fn")

    def masked(x):
        return lax.stop_gradient(logits_fn(x))

    return masked


# ----------------------------------------------------------------------------- k-WTA

def _check_k(k, width: int) -> int:
    try:
        value = operator.index(k)
    except TypeError:
        raise ValueError(f"`k` must be an integer in [1, {width}]; got {k!r}.") from None
    if not 1 <= value <= width:
        raise ValueError(f"`k` must be an integer in [1, {width}] (the layer's width); got "
                         f"{value}.")
    return value


def sparsify(h: Array, k: int) -> Array:
    """k-Winners-Take-All (Xiao et al. 2020): keep the ``k`` largest entries of ``h`` along the
    last axis, zero the others (entries tied with the ``k``-th largest are kept too).

    Its derivative is the 0/1 mask of the kept entries; the mask jumps when the ``k``-th and
    ``(k+1)``-th entries swap, which makes the model's loss discontinuous in its input.
    """
    k = _check_k(k, h.shape[-1])
    kth = lax.top_k(h, k)[0][..., -1:]
    return jnp.where(h >= kth, h, jnp.zeros_like(h))


def kwta(features_fn: LogitsFn, head_fn: LogitsFn, k: int, *,
         undefended: LogitsFn | None = None) -> MaskedDefence:
    """A network with a k-WTA layer between ``features_fn`` and ``head_fn`` (Xiao et al. 2020).

    ``defended(x) = head(sparsify(features(x), k))``. ``bpda``: the k-WTA layer with the identity
    surrogate, i.e. the gradient of ``head(features(x))`` (the dense layer) at the sparse point.
    ``undefended`` (default ``head(features(x))``, the network without the k-WTA layer) is a
    reference, NOT the truth:

    the true robust accuracy of a k-WTA network has no closed form. What these tests use as its
    "known truth" is the best known value, an upper bound: the per-example worst case of strong
    attacks on ``defended``'s own values (BPDA and plain-gradient APGD with restarts; see
    ``tests/attacks/test_bpda.py``). k-WTA's gradient is not zero, only discontinuous, so plain
    gradient attacks are weakened rather than stopped, and how much depends on ``k`` and the
    network. Measured (honestly: no masking reproduced): on the clean-trained MNIST LeNet5 with
    k-WTA after ``linear1`` (:func:`kwta_lenet5`, ``k = 20`` of 200, weights trained WITHOUT
    k-WTA), first 64 test images, L∞ ``eps = 0.1``, APGD-CE 20 steps: plain gradients 0.531,
    BPDA 0.547, the LeNet5 itself 0.609 (``tests/attacks/probe_masked_defences.py``); the
    masking Xiao et al. report needs a network trained with the layer (not done here).

    Args:
      features_fn: per-example ``x -> h (H,)`` (e.g. a hidden layer after its ReLU).
      head_fn: per-example ``h (H,) -> logits (K,)``.
      k: the number of winners, integer in ``[1, H]`` (checked when first traced).
      undefended: override of the reference model.
    """
    _check_fn(features_fn, "features_fn")
    _check_fn(head_fn, "head_fn")
    try:
        operator.index(k)
    except TypeError:
        raise ValueError(f"`k` must be an integer >= 1; got {k!r}.") from None
    if k < 1:
        raise ValueError(f"`k` must be an integer >= 1; got {k}.")
    marked = bpda(lambda h: sparsify(h, k))

    def defended(x):
        return head_fn(sparsify(features_fn(x), k))

    def twin(x):
        return head_fn(marked(features_fn(x)))

    def dense(x):
        return head_fn(features_fn(x))

    return MaskedDefence(defended, twin, dense if undefended is None else undefended)


class KWTALeNet5(nn.Module):
    """advertorch's MNIST LeNet5 (:class:`advjax.models.LeNet5`, same parameter names, so its
    variables load unchanged) with k-WTA after the ReLU of ``linear1`` (200 units).

    Attributes:
      k: winners kept of the 200 hidden units (``1 <= k <= 200``); 200 is the plain LeNet5.
      use_bpda: mark the k-WTA layer with :func:`advjax.attacks.bpda` (identity surrogate).
      num_classes: ``K``.
    """

    k: int = 20
    use_bpda: bool = False
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """Logits ``(B, K)`` of NHWC images ``x`` ``(B, 28, 28, 1)`` in [0, 1]."""
        del train
        pad = ((1, 1), (1, 1))
        h = max_pool_2x2(nn.relu(nn.Conv(32, (3, 3), padding=pad, name="conv1")(x)))
        h = max_pool_2x2(nn.relu(nn.Conv(64, (3, 3), padding=pad, name="conv2")(h)))
        h = h.reshape((h.shape[0], -1))
        h = nn.relu(nn.Dense(200, name="linear1")(h))
        k = self.k
        layer = bpda(lambda a: sparsify(a, k)) if self.use_bpda else (lambda a: sparsify(a, k))
        return nn.Dense(self.num_classes, name="linear2")(layer(h))


def kwta_lenet5(variables, k: int = 20) -> MaskedDefence:
    """:class:`KWTALeNet5` with LeNet5 ``variables`` (e.g. from
    :func:`advjax.models.load_lenet5`): the defended model, its BPDA twin and the LeNet5 itself
    as reference (see :func:`kwta` for what the truth is)."""
    _check_k(k, 200)
    from advjax.models.adapters import linen_logits_fn
    from advjax.models.cnn import LeNet5

    return MaskedDefence(linen_logits_fn(KWTALeNet5(k=k), variables),
                         linen_logits_fn(KWTALeNet5(k=k, use_bpda=True), variables),
                         linen_logits_fn(LeNet5(), variables))
