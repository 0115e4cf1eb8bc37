"""The per-example boundary every attack goes through: validate, flag, sanitise, search, report.

An attack file writes only its algorithm, a *search*::

    def search(logits_fn, ex: Example) -> tuple[x_adv, aux]

on ONE example, and assembles the attack with :func:`per_example`::

    attack = per_example(search, logits_fn, budget="eps", target="none", needs_key=True,
                         lo=lo, hi=hi, reset_misclassified=True)
    attack(x, label, *, eps, key=None, target=None) -> AttackResult

:func:`per_example` does, once for every attack:

1. static checks (dtype, ranks, number of classes ``K`` from ``logits_fn``'s output shape), with a
   ``ValueError`` naming the argument, e.g. for a batch passed to a per-example attack;
2. value checks: eagerly (concrete arguments) a ``ValueError``; always a per-example jittable flag
   (``advjax._checks`` holds each host check next to its predicate): label in ``[0, K)``, target in
   ``[0, K)`` and ``!= label``, budget finite and ``>= 0``, ``x`` finite and inside
   ``[lo, hi]`` up to ``advjax._checks.BOX_ATOL``, and the attack's own per-example settings;
3. sanitising: where the flag is False the search sees a harmless stand-in (``x`` clipped into the
   box, label 0, budget 0, ...) so that it cannot loop on NaN or index out of range; its output is
   discarded;
4. the result: :func:`advjax.attacks.result.make_result`, where an invalid example has
   ``success=False``, NaN distortions, ``x_adv = x`` and ``aux["valid_input"] = False``, and
   ``aux["input_errors"]`` is a bitmask of the failed checks (:data:`CHECKS`), decoded by
   :func:`checked`; with a budget norm, a point outside the budget is refused
   (:func:`within_budget`); the search's boolean ``aux`` flags are False for an invalid example.

``logits_fn`` is passed through :func:`_prepare_logits_fn` once, at construction: the one place
where a transformation of the model function applies to every attack (on CPU backends, the
derivatives of its convolutions without XLA:CPU's slow transposed convolution).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from advjax import _checks
from advjax.attacks.result import AttackResult, make_result
from advjax.lowering import LoweredFunction, lower_convs
from advjax.parallel import example_keys  # noqa: F401 - re-exported: the one key helper

Array = jax.Array
LogitsFn = Callable[[Array], Array]

# The checks behind ``aux["input_errors"]``: bit ``i`` is set when check ``CHECKS[i]`` failed.
CHECKS = ("label in [0, K)", "target in [0, K) and != label", "budget finite and >= 0",
          "x finite and inside [lo, hi]", "per-example setting", "logits_fn(x) finite")
_LABEL, _TARGET, _BUDGET, _X, _EXTRA, _LOGITS = range(len(CHECKS))

RESTART_RULES = ("best", "first_success")

TARGET_POLICIES = ("none", "required", "optional")


def _prepare_logits_fn(logits_fn: LogitsFn) -> LogitsFn:
    """The single hook applied to ``logits_fn`` inside every attack.

    On CPU backends the derivatives of its convolutions avoid XLA:CPU's transposed convolution,
    many times slower inside an attack's loop of steps (:func:`advjax.lowering.lower_convs` with
    ``mode="auto"``, ``form="tangent"``): forward convolutions over flipped kernels or matrix
    products. The values are XLA's own convolutions, bit for bit (except cropping paddings,
    computed as matrix products because XLA:CPU can get them wrong), and the input gradients equal
    XLA's up to float32 summation order (``benchmarks/results/lab_notes.md``: PGD-40 on the
    PGD-trained LeNet5 ~2x faster than with XLA's convolutions).
    GPU/TPU programs are unchanged. A function already wrapped by ``lower_convs`` is kept as
    given: ``lower_convs(fn, mode="native")`` opts out, ``mode="gemm"`` forces the full
    rewrite.
    """
    if isinstance(logits_fn, LoweredFunction):
        return logits_fn
    return lower_convs(logits_fn, mode="auto", form="tangent")


class Example(NamedTuple):
    """What a search receives: ONE example, validated and sanitised (see module docstring).

    Attributes:
      x: the clean example (shape of the input, float).
      label: true class, int32 scalar.
      target: target class (int32 scalar) for a targeted attack, else None.
      budget: the per-example budget (``eps``, ``rms``; float scalar of ``x``'s dtype) or None.
      key: the PRNG key, or None when none was given.
      clean_logits: ``logits_fn(x)``, ``(K,)``.
      num_classes: ``K`` (static int).
      extra: the attack's other per-example arguments (name -> array or None).
    """

    x: Array
    label: Array
    target: Array | None
    budget: Array | None
    key: Array | None
    clean_logits: Array
    num_classes: int
    extra: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Extra:
    """An attack-specific per-example keyword argument (e.g. ``initial_const``).

    Attributes:
      default: value used when the call omits it (None: passed on as None).
      host_check: ``host_check(value, name)`` raising a ``ValueError`` on bad concrete values.
      predicate: jittable ``predicate(value) -> bool scalar`` (True = valid), or None.
      safe: stand-in value given to the search for an invalid example.
    """

    default: Any = None
    host_check: Callable[[Any, str], None] | None = None
    predicate: Callable[[Array], Array] | None = None
    safe: Any = None


def num_classes(logits_fn: LogitsFn, x) -> int:
    """``K`` of ``logits_fn`` at one example shaped like ``x`` (no computation).

    Raises a ``ValueError`` naming ``x`` when ``x`` looks like a batch (``logits_fn`` gives
    ``(B, K)``, or fails on ``x`` but maps ``x[0]`` to ``(K,)``), and one naming ``logits_fn``
    when its output is not a vector.
    """
    shape, dtype = np.shape(x), jnp.result_type(x)
    batch_msg = (f"`x` has shape {shape} = (B, ...) with B={shape[0] if shape else 0}: attacks "
                 "take ONE example; batch with jax.vmap (jax.jit(jax.vmap(attack))(xs, labels, "
                 "eps=eps_per_example, key=jax.random.split(key, B))).")
    try:
        out = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(shape, dtype))
    except Exception:
        if len(shape) >= 2:
            try:
                one = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(shape[1:], dtype))
            except Exception:
                one = None
            if one is not None and len(one.shape) == 1:
                raise ValueError(batch_msg) from None
        raise
    if len(out.shape) == 2 and len(shape) >= 2 and out.shape[0] == shape[0]:
        raise ValueError(batch_msg)
    if len(out.shape) != 1:
        raise ValueError(f"`logits_fn` must map one example to logits of shape (K,); got "
                         f"{out.shape} for an input of shape {shape}.")
    return int(out.shape[0])


def _check_class(value, name: str) -> Array:
    _checks.check_integer(value, name)
    if np.ndim(value) != 0:
        raise ValueError(f"`{name}` must be a scalar class index for one example; got shape "
                         f"{np.shape(value)} (batch the attack with jax.vmap: one {name} per "
                         "example).")
    return jnp.asarray(value, jnp.int32)


def _check_budget(value, name: str) -> Array:
    if value is None:
        raise ValueError(f"`{name}` is required (a scalar >= 0, input units).")
    if np.ndim(value) != 0:
        raise ValueError(f"`{name}` must be a scalar for one example; got shape "
                         f"{np.shape(value)} (per-example budgets: batch with jax.vmap, "
                         f"{name}=jnp.full((B,), value)).")
    _checks.check_nonnegative(value, name)
    return jnp.asarray(value, jnp.result_type(float))


def _is_batched(x) -> bool:
    """``x`` is being mapped by an enclosing ``jax.vmap`` (best effort: False if unknown)."""
    try:
        from jax._src.interpreters.batching import BatchTracer
    except ImportError:  # pragma: no cover - internal layout changed
        return False
    return isinstance(x, BatchTracer)


def check_key(key, *, x=None, name: str = "key") -> Array:
    """Validates a PRNG key for ONE example (typed ``jax.random.key`` or raw ``uint32[2]``).

    Under ``jax.vmap`` (``x`` batched) a key that is not mapped (the same key closed over for every
    example) is refused: every example would draw the same random numbers.
    """
    per_example = (f"pass one key per example: under jax.vmap, {name}=jax.random.split(key, B) "
                   "(or jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(B))).")
    if key is None:
        raise ValueError(f"`{name}` is required: pass jax.random.key(seed); {per_example}")
    if x is not None and _is_batched(x) and not isinstance(key, jax.core.Tracer):
        raise ValueError(f"`{name}` is one key for the whole batch under jax.vmap; "
                         f"{per_example}")
    if jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key):
        if np.ndim(key) != 0:
            raise ValueError(f"`{name}` must be a single key for one example; got shape "
                             f"{np.shape(key)}; {per_example}")
        return key
    if np.shape(key) != (2,) or not jnp.issubdtype(jnp.result_type(key), jnp.unsignedinteger):
        raise ValueError(f"`{name}` must be a PRNG key (jax.random.key or PRNGKey) for one "
                         f"example; got shape {np.shape(key)} and dtype {jnp.result_type(key)} "
                         f"(a raw uint32[2] key under jax.vmap is split element-wise); "
                         f"{per_example}")
    return key


def check_box_setting(lo, hi) -> tuple[float | None, float | None]:
    """Validates a constructor's box; ``None`` for both means "no box"."""
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


def budget_slack(x: Array, norm: str) -> Array:
    """Float rounding allowed above a budget: clipping to ``x +- eps`` (or rescaling onto the L2
    sphere) in floating point can leave ``||x_adv - x||`` a few ulps of ``|x|`` above ``eps``.

    ``4 ulp(1 + max|x|)`` per coordinate (times ``sqrt(d)`` for L2, ``d`` for L1, a sum of ``d``
    rounded coordinates): at float32 and ``[0, 1]``
    images ~1e-6 (L-infinity) -- orders of magnitude below any budget in use, so a point
    genuinely outside the ball (even 0.1 % outside at eps = 8/255) is refused.
    """
    ulp = jnp.finfo(x.dtype).eps * (1.0 + jnp.max(jnp.abs(x)))
    scale = {"linf": 1.0, "l2": jnp.sqrt(jnp.asarray(x.size, x.dtype)),
             "l1": jnp.asarray(x.size, x.dtype)}[norm]
    return 4 * ulp * scale


def within_budget(x: Array, x_adv: Array, eps: Array, norm: str) -> Array:
    """The inside-the-budget check of the boundary (bool scalar): ``||x_adv - x||_norm <= eps``
    up to :func:`budget_slack` (no relative tolerance)."""
    delta = (x_adv - x).reshape(-1)
    size = {"linf": lambda: jnp.max(jnp.abs(delta)), "l2": lambda: jnp.sqrt(jnp.sum(delta * delta)),
            "l1": lambda: jnp.sum(jnp.abs(delta))}[norm]()
    return size <= eps + budget_slack(x, norm)


def per_example(
    search: Callable[[LogitsFn, Example], tuple[Array, Mapping[str, Array]]],
    logits_fn: LogitsFn,
    *,
    lo: float | None,
    hi: float | None,
    budget: str | None = None,
    target: str = "none",
    default_target: Callable[[Example], Array] | None = None,
    target_may_equal_label: bool = False,
    needs_key: bool = False,
    reset_misclassified: bool = True,
    clip: bool = True,
    min_classes: int = 2,
    extras: Mapping[str, Extra] | None = None,
    budget_norm: str | None = None,
    budget_required: bool = True,
    search_success: bool = False,
    check_classes: Callable[[int], None] | None = None,
    nan_aux: tuple[str, ...] = (),
    distance_aux: tuple[str, ...] = (),
) -> Callable[..., AttackResult]:
    """Assembles a per-example attack from its ``search`` (the ritual written once).

    Args:
      search: ``search(logits_fn, ex) -> (x_adv, aux)`` for ONE validated example
        (:class:`Example`); ``aux`` a dict of arrays copied into the result.
      logits_fn: per-example ``x -> logits (K,)``; passed through :func:`_prepare_logits_fn`.
      lo, hi: the box (already validated; ``None`` for no box).
      budget: name of the required per-example budget argument (``"eps"``, ``"rms"``), or None.
      target: ``"none"`` (untargeted; a ``target=`` is refused), ``"required"`` or ``"optional"``
        (then ``default_target(ex)`` gives it). With a target, success is ``argmax == target``.
      default_target: ``ex -> target`` when ``target="optional"`` and none is given.
      target_may_equal_label: accept ``target == label`` (explanations towards the true class).
      needs_key: ``key`` is required (random starts, noise).
      reset_misclassified: see :func:`advjax.attacks.result.make_result`.
      clip: clip the search's ``x_adv`` to the box (when there is one).
      min_classes: smallest ``K`` the attack supports.
      extras: the attack's other per-example keyword arguments (:class:`Extra`).
      budget_norm: ``"linf"`` / ``"l2"`` / ``"l1"``: the budget is the radius of that ball, and
        a search point outside it (:func:`within_budget`) is not a success: ``x_adv`` is reset to
        ``x`` (a minimum-norm search that went further, or a bug). ``aux["within_budget"]``
        reports it.
      budget_required: False makes the budget optional (FAB: minimum norm without it, a fixed
        budget with it); the search then sees ``ex.budget = None`` when it is omitted.
      search_success: the search decides success itself (``aux["success"]``, e.g. verified over
        several draws of a randomised model); it is still refused for invalid input, outside
        the budget or at non-finite logits.
      check_classes: ``check_classes(K)`` raising a ``ValueError`` when the attack cannot run
        with ``K`` classes (e.g. the DLR losses).
      nan_aux: names of float ``aux`` entries (measurements such as FAB's ``size``) reported as
        NaN for an invalid example.
      distance_aux: names of float ``aux`` entries that measure the distance of the returned
        point (a minimal-norm attack's ``distance``): reported as ``inf`` for a clean-correct
        example whose returned point the final forward pass does not call a success, so a
        distance always belongs to an adversarial point (a search may count a point whose top
        logits tie to float precision, which a fresh pass decides otherwise).

    Restarts: an attack with restarts combines its runs with :func:`advjax.attacks._restarts.
    best_of_runs` under one of :data:`RESTART_RULES`: ``"best"`` (success first, then the
    objective; PGD, the public APGD) or ``"first_success"`` (the first successful run wins and
    later runs do not run; the AutoAttack stages, as in the official code).

    Returns:
      ``attack(x, label, *, key=None, target=None, <budget>, **extras) -> AttackResult``.
    """
    if budget_norm is not None:
        _checks.check_choice(budget_norm, "budget_norm", ("linf", "l2", "l1"))
        if budget is None:
            raise ValueError("`budget_norm` needs a `budget` argument name.")
    if target not in TARGET_POLICIES:
        raise ValueError(f"`target` policy must be one of {list(TARGET_POLICIES)}; got {target!r}.")
    if target == "optional" and default_target is None:
        raise ValueError("target='optional' needs `default_target`.")
    extras = dict(extras or {})
    logits_fn = _prepare_logits_fn(logits_fn)
    box = lo is not None
    targeted = target != "none"

    def attack(x, label, *, key=None, target=None, **kwargs) -> AttackResult:
        unknown = set(kwargs) - set(extras) - ({budget} if budget else set())
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {sorted(unknown)}; this attack takes "
                            f"{sorted(({budget} if budget else set()) | set(extras))}, key, "
                            "target.")
        # 1. static checks
        _checks.check_floating(x, "x")
        if np.ndim(x) < 1:
            raise ValueError("`x` must be one example with rank >= 1 (no batch axis); got a "
                             "scalar.")
        k = num_classes(logits_fn, x)
        if k < min_classes:
            raise ValueError(f"`logits_fn` must output at least {min_classes} classes; got {k}.")
        if check_classes is not None:
            check_classes(k)
        x = jnp.asarray(x)
        label_in = label
        label = _check_class(label, "label")
        # 2. eager value checks (concrete arguments only) ...
        _checks.check_labels(label_in, "label", k)
        targeted_given = target is not None
        if targeted_given:
            if not targeted:
                raise ValueError("`target` was given to an untargeted attack; construct it with "
                                 "targeted=True.")
            target_in = target
            target = _check_class(target, "target")
            _checks.check_labels(target_in, "target", k)
        elif targeted and default_target is None:
            raise ValueError("`target` is required (scalar class index) for a targeted attack.")
        eps = None
        if budget is not None and (budget_required or kwargs.get(budget) is not None):
            eps = _check_budget(kwargs.get(budget), budget)
        if box:
            _checks.check_in_range(x, "x", lo, hi)
        else:
            _checks.check_finite(x, "x")
        if needs_key or key is not None:
            key = check_key(key, x=x if needs_key else None)
        extra = {}
        for name, spec in extras.items():
            value = kwargs.get(name, spec.default)
            if value is not None:
                if np.ndim(value) != 0:
                    raise ValueError(f"`{name}` must be a scalar for one example; got shape "
                                     f"{np.shape(value)} (batch with jax.vmap).")
                if spec.host_check is not None:
                    spec.host_check(value, name)
            extra[name] = value
        if (targeted_given and not target_may_equal_label and _checks.is_concrete(target_in)
                and _checks.is_concrete(label_in) and int(target_in) == int(label_in)):
            raise ValueError(f"`target` must differ from `label` (both {int(label_in)}): a "
                             "targeted attack towards the true class is not an attack.")
        # ... and the same checks as per-example flags
        fails = {_LABEL: ~_checks.labels_ok(label, k)}
        x_ok = _checks.in_range_ok(x, lo, hi) if box else _checks.finite_ok(x)
        fails[_X] = ~x_ok
        if eps is not None:
            fails[_BUDGET] = ~_checks.nonnegative_ok(eps)
        if targeted_given:
            t_ok = _checks.labels_ok(target, k)
            if not target_may_equal_label:
                t_ok = t_ok & (target != label)
            fails[_TARGET] = ~t_ok
        extra_ok = jnp.ones((), bool)
        for name, spec in extras.items():
            if extra[name] is not None and spec.predicate is not None:
                extra_ok = extra_ok & spec.predicate(jnp.asarray(extra[name]))
        fails[_EXTRA] = ~extra_ok
        errors = sum(fails[i].astype(jnp.int32) << i for i in sorted(fails))
        valid = errors == 0
        # 3. sanitise: an invalid example gets a harmless stand-in
        x_s = jnp.nan_to_num(x, nan=lo if box else 0.0, posinf=hi if box else 0.0,
                             neginf=lo if box else 0.0)
        x_s = jnp.where(valid, x, _clip(x_s, lo, hi))
        label_s = jnp.where(valid, label, 0)
        eps_s = None if eps is None else jnp.where(valid, eps, 0.0).astype(x.dtype)
        extra_s = {n: (v if v is None or extras[n].safe is None
                       else jnp.where(valid, v, extras[n].safe)) for n, v in extra.items()}
        clean_logits = logits_fn(x_s)
        # The model itself at x: non-finite clean logits (argmax of NaN is 0) make the example
        # unusable: flagged, never counted robust nor successful.
        logits_ok = _checks.finite_ok(clean_logits)
        if _checks.is_concrete(clean_logits) and not bool(logits_ok):
            raise ValueError("`logits_fn` gives non-finite logits at `x`: the example can be "
                             "neither robust nor broken.")
        errors = errors | ((valid & ~logits_ok).astype(jnp.int32) << _LOGITS)
        valid = errors == 0
        ex = Example(x=x_s, label=label_s, target=None, budget=eps_s, key=key,
                     clean_logits=clean_logits, num_classes=k, extra=extra_s)
        if targeted:
            if targeted_given:
                t_s = jnp.where(valid, target, (label_s + 1) % k)
            else:
                t_s = jnp.asarray(default_target(ex), jnp.int32)
                target = t_s
            ex = ex._replace(target=t_s)
        # 4. search and result
        x_adv, aux = search(logits_fn, ex)
        if clip and box:
            x_adv = jnp.clip(x_adv, lo, hi)
        aux = dict(aux)
        found = aux.pop("success") if search_success else None
        if budget_norm is not None and eps is not None:
            inside = within_budget(x_s, x_adv, eps_s, budget_norm)
            x_adv = jnp.where(inside, x_adv, x_s)
            aux["within_budget"] = inside
            if found is not None:
                found = found & inside
        # The search's flags describe the stand-in of an invalid example: never report them.
        aux = {n: (v & valid if jnp.result_type(v) == jnp.bool_ else
                   jnp.where(valid, v, jnp.nan) if n in nan_aux else v) for n, v in aux.items()}
        aux["input_errors"] = errors
        if targeted:
            aux["target"] = target
        res = make_result(logits_fn, x, x_adv, label, target=target if targeted else None,
                          clean_logits=clean_logits, aux=aux, valid=valid,
                          reset_misclassified=reset_misclassified, success=found)
        if distance_aux:
            unproven = valid & res.clean_correct & ~res.success
            res = res.replace(aux={n: (jnp.where(unproven, jnp.inf, v) if n in distance_aux
                                       else v) for n, v in res.aux.items()})
        return res

    return attack


def _clip(x, lo, hi):
    return x if lo is None else jnp.clip(x, lo, hi)


def describe_errors(errors) -> dict[str, int]:
    """Host-side decoding of ``aux["input_errors"]`` (any shape): check name -> number failing."""
    e = np.asarray(errors).astype(np.int64)
    return {name: int(np.count_nonzero((e >> i) & 1)) for i, name in enumerate(CHECKS)}


def checked(batched_attack: Callable[..., AttackResult]) -> Callable[..., AttackResult]:
    """Opt-in checked call: ``batched_attack`` (e.g. ``jax.vmap(attack)``) jitted, then its
    ``aux["input_errors"]`` checked with ``jax.experimental.checkify`` (on device); raises after
    the call when any example had invalid input.

    Args:
      batched_attack: a function returning a batched :class:`AttackResult` whose ``aux`` holds
        ``input_errors`` (every ``advjax.attacks`` constructor's result does).

    Returns:
      ``run(*args, **kwargs) -> AttackResult`` (jitted). It raises
      ``jax.experimental.checkify.JaxRuntimeError`` naming, for every failed check, how many
      examples failed it (e.g. ``"invalid input in 3 of 8 example(s): label in [0, K): 2; ..."``).
    """

    compiled = jax.jit(batched_attack)

    def check(errors):
        errors = errors.reshape(-1)
        counts = {f"c{i}": jnp.sum((errors >> i) & 1) for i in range(len(CHECKS))}
        n_bad = jnp.sum(errors != 0)
        detail = "; ".join(f"{name}: {{c{i}}}" for i, name in enumerate(CHECKS))
        checkify.check(n_bad == 0, "invalid input in {n} of " + str(errors.shape[0])
                       + " example(s): " + detail, n=n_bad, **counts)

    checker = jax.jit(checkify.checkify(check))

    def run(*args, **kwargs):
        res = compiled(*args, **kwargs)
        err, _ = checker(jnp.asarray(res.aux["input_errors"]))
        err.throw()
        return res

    return run
