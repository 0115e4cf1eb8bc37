"""Pieces shared by the attacks: projections, normalised directions, losses, random starts, checks.

Everything here works on ONE example (no batch axis) and is a pure function of arrays and static
settings, so it composes with ``jax.jit``, ``jax.vmap`` and ``jax.grad``.

Conventions:
  * ``x`` is the clean example, any shape, float, inside the box ``[lo, hi]``.
  * ``delta = x_adv - x``; norms are over all elements of the example.
  * RMSE(v) = ``||v||_2 / sqrt(v.size)`` (the distortion unit of Szegedy et al. §4.1 and of Woods
    et al. Algorithm 1, papers.md §1.4 and §2.9).
  * Losses are written as quantities to MAXIMISE by an untargeted attack; a targeted attack
    maximises ``-loss(logits, target)`` for CE, or the targeted margin / DLR given here.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from advjax import _checks

Array = jax.Array
LogitsFn = Callable[[Array], Array]

NORMS = ("linf", "l2")
LOSSES = ("ce", "margin", "dlr")

# ----------------------------------------------------------------------------------------------
# Norms and normalised directions
# ----------------------------------------------------------------------------------------------


def l2_norm(v: Array) -> Array:
    """L2 norm of ``v`` over all elements (scalar)."""
    return jnp.sqrt(jnp.sum(jnp.square(v)))


def linf_norm(v: Array) -> Array:
    """L-infinity norm of ``v`` over all elements (scalar)."""
    return jnp.max(jnp.abs(v))


def rmse(v: Array) -> Array:
    """Root-mean-square of ``v`` over all elements: ``||v||_2 / sqrt(v.size)`` (scalar)."""
    return jnp.sqrt(jnp.mean(jnp.square(v)))


def normalize_l2(g: Array, eps: float = 1e-12) -> Array:
    """``g / ||g||_2`` (zero stays zero): the steepest-ascent direction of unit L2 norm."""
    n = l2_norm(g)
    return g / jnp.maximum(n, eps)


def normalize_rmse(g: Array, eps: float = 1e-8) -> Array:
    """``g / (eps + RMSE(g))``: Woods et al. Algorithm 1 normalisation (papers.md §2.9)."""
    return g / (eps + rmse(g))


def steepest_direction(g: Array, norm: str) -> Array:
    """Steepest-ascent direction of unit ``norm`` for gradient ``g``.

    **Arguments:**
      g: gradient, any shape.
      norm: ``"linf"`` (returns ``sign(g)``, which has L-infinity norm 1) or ``"l2"``
        (returns ``g / ||g||_2``).

    **Returns:**
      An array of the shape of ``g``.
    """
    if norm == "linf":
        return jnp.sign(g)
    if norm == "l2":
        return normalize_l2(g)
    raise ValueError(f"`norm` must be one of {list(NORMS)}; got {norm!r}.")


def dual_norm(v: Array, norm: str) -> Array:
    """Dual norm of ``v`` for the given attack norm: L1 for ``"linf"``, L2 for ``"l2"``."""
    if norm == "linf":
        return jnp.sum(jnp.abs(v))
    if norm == "l2":
        return l2_norm(v)
    raise ValueError(f"`norm` must be one of {list(NORMS)}; got {norm!r}.")


# ----------------------------------------------------------------------------------------------
# Projections
# ----------------------------------------------------------------------------------------------


def clip_box(x: Array, lo: float | None, hi: float | None) -> Array:
    """``clip(x, lo, hi)``; ``lo = hi = None`` means no box (identity)."""
    if lo is None and hi is None:
        return x
    return jnp.clip(x, lo, hi)


def project_linf(delta: Array, eps: Array) -> Array:
    """Euclidean projection of ``delta`` onto the L-infinity ball of radius ``eps`` (clip)."""
    return jnp.clip(delta, -eps, eps)


def project_l2(delta: Array, eps: Array) -> Array:
    """Euclidean projection of ``delta`` onto the L2 ball of radius ``eps`` (radial rescale)."""
    n = l2_norm(delta)
    scale = jnp.where(n > eps, eps / jnp.maximum(n, 1e-30), 1.0)
    return delta * scale


def project_linf_box(x_adv: Array, x: Array, eps: Array, lo: float | None,
                     hi: float | None) -> Array:
    """Exact Euclidean projection of ``x_adv`` onto ``{z : ||z - x||_inf <= eps} ∩ [lo, hi]``.

    Both sets are coordinate-wise intervals, so the projection onto their intersection is the
    coordinate-wise clip to ``[max(x - eps, lo), min(x + eps, hi)]`` (exact when ``x`` is inside the
    box, so that the interval is non-empty).
    """
    lower = x - eps
    upper = x + eps
    if lo is not None:
        lower = jnp.maximum(lower, lo)
    if hi is not None:
        upper = jnp.minimum(upper, hi)
    return jnp.clip(x_adv, lower, upper)


def project_l2_box(x_adv: Array, x: Array, eps: Array, lo: float | None, hi: float | None,
                   *, method: str = "exact", iters: int = 40) -> Array:
    """Euclidean projection of ``x_adv`` onto ``{z : ||z - x||_2 <= eps} ∩ [lo, hi]``.

    **Arguments:**
      x_adv: the point to project, shape of ``x``.
      x: centre of the ball (the clean example), inside the box.
      eps: ball radius (scalar, >= 0, input units).
      lo, hi: the box (``None`` for no box).
      method: ``"exact"`` or ``"clip"``.
        * ``"exact"``: the true projection. With ``v = x_adv - x`` the KKT conditions of
          ``min ||z - x_adv||^2 s.t. ||z - x|| <= eps, lo <= z <= hi`` give
          ``z(t) = clip(x + t v, lo, hi)`` with ``t = 1 / (1 + lambda)`` in ``(0, 1]``, where
          ``lambda >= 0`` is the ball's multiplier; ``||z(t) - x||`` is non-decreasing in ``t``,
          so ``t`` is found by bisection (``iters`` halvings, on the feasible side so the result
          never leaves the ball).
        * ``"clip"``: the common approximation "project onto the L2 ball, then clip to the box".
          The result is feasible (clipping towards ``x``'s box only shrinks ``|z - x|``
          coordinate-wise) but is not always the nearest feasible point.
      iters: bisection steps of ``"exact"``.

    **Returns:**
      The projected point, shape of ``x``.
    """
    v = x_adv - x
    if method == "clip" or (lo is None and hi is None):
        return clip_box(x + project_l2(v, eps), lo, hi)
    if method != "exact":
        raise ValueError(f"`method` must be 'exact' or 'clip'; got {method!r}.")

    def dist(t):
        return l2_norm(clip_box(x + t * v, lo, hi) - x)

    inside = dist(1.0) <= eps

    def body(_, bracket):
        t_lo, t_hi = bracket
        mid = 0.5 * (t_lo + t_hi)
        ok = dist(mid) <= eps
        return jnp.where(ok, mid, t_lo), jnp.where(ok, t_hi, mid)

    zero = jnp.zeros((), dtype=v.dtype)
    t_lo, _ = jax.lax.fori_loop(0, iters, body, (zero, jnp.ones((), dtype=v.dtype)))
    t = jnp.where(inside, 1.0, t_lo)
    return clip_box(x + t * v, lo, hi)


def project(x_adv: Array, x: Array, eps: Array, norm: str, lo: float | None,
            hi: float | None) -> Array:
    """Projection onto the ``norm`` ball of radius ``eps`` around ``x`` intersected with the box
    (exact for both norms, see :func:`project_linf_box` and :func:`project_l2_box`)."""
    if norm == "linf":
        return project_linf_box(x_adv, x, eps, lo, hi)
    if norm == "l2":
        return project_l2_box(x_adv, x, eps, lo, hi)
    raise ValueError(f"`norm` must be one of {list(NORMS)}; got {norm!r}.")


# ----------------------------------------------------------------------------------------------
# Random starts
# ----------------------------------------------------------------------------------------------


def sample_linf_ball(key: Array, shape, eps: Array, dtype=jnp.float32) -> Array:
    """A point uniform in the L-infinity ball of radius ``eps`` (each coordinate U[-eps, eps])."""
    return jax.random.uniform(key, shape, dtype, -1.0, 1.0) * eps


def sample_l2_ball(key: Array, shape, eps: Array, dtype=jnp.float32) -> Array:
    """A point uniform in the L2 ball of radius ``eps`` in ``d = prod(shape)`` dimensions.

    Direction: a normalised standard Gaussian (uniform on the sphere); radius ``eps * U^(1/d)``,
    ``U ~ U[0, 1]``, which makes the point uniform in volume.
    """
    k_dir, k_rad = jax.random.split(key)
    g = jax.random.normal(k_dir, shape, dtype)
    d = int(np.prod(shape)) if len(shape) else 1
    u = jax.random.uniform(k_rad, (), dtype)
    return normalize_l2(g) * eps * u ** (1.0 / d)


def sample_ball(key: Array, shape, eps: Array, norm: str, dtype=jnp.float32) -> Array:
    """Uniform sample in the ``norm`` ball of radius ``eps``."""
    if norm == "linf":
        return sample_linf_ball(key, shape, eps, dtype)
    if norm == "l2":
        return sample_l2_ball(key, shape, eps, dtype)
    raise ValueError(f"`norm` must be one of {list(NORMS)}; got {norm!r}.")


# ----------------------------------------------------------------------------------------------
# Losses (one example: logits (K,), integer label)
# ----------------------------------------------------------------------------------------------


def ce_loss(logits: Array, label: Array) -> Array:
    """Cross-entropy ``-log softmax(logits)[label]`` (scalar, nats)."""
    return -jax.nn.log_softmax(logits)[label]


def _max_other(logits: Array, label: Array) -> Array:
    mask = jax.nn.one_hot(label, logits.shape[-1], dtype=bool)
    return jnp.max(jnp.where(mask, -jnp.inf, logits))


def margin_loss(logits: Array, label: Array) -> Array:
    """Untargeted margin ``max_{j != label} z_j - z_label`` (> 0 iff misclassified)."""
    return _max_other(logits, label) - logits[label]


def targeted_margin_loss(logits: Array, target: Array) -> Array:
    """Targeted margin ``z_target - max_{j != target} z_j`` (> 0 iff predicted as ``target``)."""
    return logits[target] - _max_other(logits, target)


def dlr_loss(logits: Array, label: Array) -> Array:
    """Difference-of-logits-ratio loss (Croce & Hein 2020, Eq. 6), to maximise.

    ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12)`` with ``z_pi`` the sorted logits
    (decreasing). Needs at least 3 classes.
    """
    z = jnp.sort(logits)[::-1]
    return -(logits[label] - _max_other(logits, label)) / (z[0] - z[2] + 1e-12)


def targeted_dlr_loss(logits: Array, label: Array, target: Array) -> Array:
    """Targeted DLR (Croce & Hein 2020, Eq. 7), to maximise.

    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``. Needs at least 4 classes.
    """
    z = jnp.sort(logits)[::-1]
    return -(logits[label] - logits[target]) / (z[0] - 0.5 * (z[2] + z[3]) + 1e-12)


def attack_loss(name: str, logits: Array, label: Array, target: Array | None = None) -> Array:
    """The objective an attack MAXIMISES.

    **Arguments:**
      name: ``"ce"``, ``"margin"`` or ``"dlr"``.
      logits: ``(K,)``.
      label: the true label (int scalar).
      target: ``None`` for untargeted; otherwise the target class (int scalar).

    **Returns:**
      Scalar. Untargeted: ``CE(label)``, ``margin(label)``, ``DLR(label)``. Targeted:
      ``-CE(target)``, ``targeted_margin(target)``, targeted DLR.
    """
    if name == "ce":
        return ce_loss(logits, label) if target is None else -ce_loss(logits, target)
    if name == "margin":
        if target is None:
            return margin_loss(logits, label)
        return targeted_margin_loss(logits, target)
    if name == "dlr":
        if target is None:
            return dlr_loss(logits, label)
        return targeted_dlr_loss(logits, label, target)
    raise ValueError(f"`loss` must be one of {list(LOSSES)}; got {name!r}.")


# ----------------------------------------------------------------------------------------------
# Validation (constructor and call time)
# ----------------------------------------------------------------------------------------------


def check_box_setting(lo, hi) -> tuple[float | None, float | None]:
    """Validates the constructor's box; ``None`` for both means "no box"."""
    if lo is None and hi is None:
        return None, None
    if lo is None or hi is None:
        raise ValueError(f"box needs both `lo` and `hi` (or neither); got lo={lo}, hi={hi}.")
    _checks.check_box(lo, hi)
    return float(lo), float(hi)


def check_nonneg_float(value, name: str) -> float:
    """A static non-negative finite float setting."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a number; got {value!r}.") from None
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0; got {value!r}.")
    return v


def check_positive_float(value, name: str) -> float:
    """A static positive finite float setting."""
    v = check_nonneg_float(value, name)
    if v <= 0:
        raise ValueError(f"`{name}` must be > 0; got {value!r}.")
    return v


def num_classes(logits_fn: LogitsFn, x: Array) -> int:
    """Number of classes of ``logits_fn`` at an example shaped like ``x`` (no computation).

    Raises a ``ValueError`` naming ``logits_fn`` when its output is not a vector.
    """
    out = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)))
    if len(out.shape) != 1:
        raise ValueError(f"`logits_fn` must map one example to logits of shape (K,); got "
                         f"{out.shape} for an input of shape {np.shape(x)}.")
    return int(out.shape[0])


def check_x(x, lo: float | None, hi: float | None, name: str = "x") -> Array:
    """Validates one example: floating dtype, rank >= 1, finite, inside the box (when concrete)."""
    _checks.check_floating(x, name)
    if np.ndim(x) < 1:
        raise ValueError(f"`{name}` must be one example with rank >= 1 (no batch axis); got a "
                         "scalar.")
    if lo is not None:
        _checks.check_in_range(x, name, lo, hi)
    else:
        _checks.check_finite(x, name)
    return jnp.asarray(x)


def check_label(label, name: str, k: int) -> Array:
    """Validates a scalar integer class index in ``[0, k)`` (range checked when concrete)."""
    _checks.check_integer(label, name)
    if np.ndim(label) != 0:
        raise ValueError(f"`{name}` must be a scalar class index for one example; got shape "
                         f"{np.shape(label)} (batch the attack with jax.vmap).")
    _checks.check_labels(label, name, k)
    return jnp.asarray(label)


def check_eps(eps, name: str = "eps") -> Array:
    """Validates a scalar budget ``>= 0`` (value checked when concrete); returns a float array."""
    if eps is None:
        raise ValueError(f"`{name}` is required (a scalar >= 0).")
    if np.ndim(eps) != 0:
        raise ValueError(f"`{name}` must be a scalar for one example; got shape {np.shape(eps)} "
                         "(per-example budgets: batch the attack with jax.vmap).")
    _checks.check_nonnegative(eps, name)
    return jnp.asarray(eps, dtype=jnp.result_type(float))


def check_key(key, name: str = "key") -> Array:
    """Validates a PRNG key (new-style typed key or raw ``uint32[2]``)."""
    if key is None:
        raise ValueError(f"`{name}` is required: pass jax.random.key(seed) (per example under "
                         "vmap: jax.random.split or fold_in).")
    if jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key):
        if np.ndim(key) != 0:
            raise ValueError(f"`{name}` must be a single key for one example; got shape "
                             f"{np.shape(key)}.")
        return key
    if np.shape(key) != (2,) or not jnp.issubdtype(jnp.result_type(key), jnp.unsignedinteger):
        raise ValueError(f"`{name}` must be a PRNG key (jax.random.key or PRNGKey); got shape "
                         f"{np.shape(key)} and dtype {jnp.result_type(key)}.")
    return key


def default_step_size(eps: Array, steps: int, norm: str) -> Array:
    """``2.5 * eps / steps``: the relative default step of Madry et al. for PGD."""
    del norm
    return 2.5 * eps / steps


def check_inputs(logits_fn: LogitsFn, x, label, lo: float | None,
                 hi: float | None) -> tuple[Array, Array, int]:
    """Call-time validation shared by the attacks: ``(x, label, num_classes)``.

    ``x`` must be a floating example (rank >= 1, finite, inside ``[lo, hi]`` when concrete);
    ``label`` a scalar integer in ``[0, K)`` (checked when concrete), where ``K`` is read from the
    output shape of ``logits_fn``.
    """
    x = check_x(x, lo, hi)
    k = num_classes(logits_fn, x)
    label = check_label(label, "label", k)
    return x, label, k


def check_target(target, targeted: bool, k: int) -> Array | None:
    """``target``: required (scalar int in ``[0, k)``) when targeted, refused otherwise."""
    if not targeted:
        if target is not None:
            raise ValueError("`target` was given to an untargeted attack; construct it with "
                             "targeted=True.")
        return None
    if target is None:
        raise ValueError("`target` is required (scalar class index) for a targeted attack.")
    return check_label(target, "target", k)


def grad_and_aux(objective: Callable[[Array], tuple[Array, Array]], x: Array):
    """``(value, aux, grad)`` of a scalar ``objective(x) -> (value, aux)``."""
    (value, aux), grad = jax.value_and_grad(objective, has_aux=True)(x)
    return value, aux, grad


def input_flag(x: Array, label: Array, k: int, *, eps: Array | None = None,
               target: Array | None = None) -> Array:
    """Bool scalar: the call-time inputs are valid (finite ``x``, ``eps >= 0`` and finite,
    ``label`` / ``target`` in ``[0, k)``).

    Concrete inputs are checked eagerly (with errors) by the ``check_*`` helpers; under ``jit`` /
    ``vmap`` those value checks cannot run, so attacks report this flag as
    ``result.aux["valid_input"]`` instead of failing silently.
    """
    ok = jnp.all(jnp.isfinite(x)) & (label >= 0) & (label < k)
    if eps is not None:
        ok = ok & jnp.isfinite(eps) & (eps >= 0)
    if target is not None:
        ok = ok & (target >= 0) & (target < k)
    return ok


def finish_result(logits_fn: LogitsFn, x: Array, x_adv: Array, label: Array, *,
                  target: Array | None = None, clean_logits: Array | None = None,
                  aux=None, reset_misclassified: bool = True):
    """:func:`advjax.attacks.result.make_result`, or (``reset_misclassified=False``) the same
    fields WITHOUT resetting already-misclassified (targeted: already-on-target) examples to
    ``x`` — what adversarial training wants (every example of the batch perturbed)."""
    from advjax.attacks.result import AttackResult, distortions, is_success, make_result

    if reset_misclassified:
        return make_result(logits_fn, x, x_adv, label, target=target, clean_logits=clean_logits,
                           aux=aux)
    if clean_logits is None:
        clean_logits = logits_fn(x)
    logits = logits_fn(x_adv)
    l2, linf, rmse_ = distortions(x, x_adv)
    return AttackResult(x_adv=x_adv, success=is_success(logits, label, target), l2=l2, linf=linf,
                        rmse=rmse_, logits=logits,
                        clean_correct=jnp.argmax(clean_logits, axis=-1) == label,
                        aux=dict(aux or {}))
