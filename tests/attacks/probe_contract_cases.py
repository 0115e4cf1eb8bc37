"""Probes: the wrong numbers of issue 31 ("one attack contract"), measured on whichever
``advjax`` is importable (the tree before the fixes, af54a8c, or main). Not a test module (no
``test_`` prefix): the tests named in each line check the fixed behaviour on main.

Each case prints ONE line: ``<case> | <what was measured> | [test on main]``; an exception is
printed as ``raised <Type>: <msg>`` and the next case runs. Self-contained tiny models (a random
MLP, a random linear model, a one-conv net), so that the same script runs on both trees; where
the API differs between the trees (``square(layout=)`` exists only after), the case says so.

Run (from the repository root of the tree to measure):
``python -m tests.attacks.probe_contract_cases [CASE ...]``. Seconds per case on a CPU, except
``prob_pgd20`` (LeNet5, 32 MNIST images, needs ``$ADVJAX_DATA_DIR``). The ``version="rand"``
case (minutes) is ``python benchmarks/rand_eot.py --n 32``, not here.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from advjax import attacks

K = 5
SHAPE = (4, 4, 1)


def _mlp(seed=0):
    rng = np.random.default_rng(seed)
    w1 = jnp.asarray(rng.normal(size=(16, 12)) * 0.8, jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(12, K)) * 0.8, jnp.float32)
    b2 = jnp.asarray(rng.normal(size=K) * 0.1, jnp.float32)

    def logits_fn(x):
        return jnp.tanh(x.reshape(-1) @ w1) @ w2 + b2

    xs = rng.uniform(0.1, 0.9, size=(16, *SHAPE)).astype(np.float32)
    labels = np.asarray(jax.vmap(logits_fn)(jnp.asarray(xs))).argmax(-1).astype(np.int32)
    return logits_fn, xs, labels


def _linear(seed=3, k=4):
    rng = np.random.default_rng(seed)
    W = jnp.asarray(rng.normal(size=(16, k)), jnp.float32)
    b = jnp.asarray(rng.normal(size=k) * 0.1, jnp.float32)

    def logits_fn(x):
        return x.reshape(-1) @ W + b

    xs = rng.uniform(0.3, 0.7, size=(4, *SHAPE)).astype(np.float32)
    labels = np.asarray(jax.vmap(logits_fn)(jnp.asarray(xs))).argmax(-1).astype(np.int32)
    return logits_fn, xs, labels


def _keys(n, seed=0):
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(n))


def _eval_kw(**extra):
    return dict(dict(steps=4, queries=30, n_targets=2, attacks=["apgd-ce"], batch_size=16),
                **extra)


# --------------------------------------------------------------------------------------------

def case_invalid_counted_robust():
    """x * 255 with the clean prediction as label: clean_correct / success per constructor."""
    f, xs, ys = _linear()
    x = jnp.asarray(np.stack([xs[1], xs[0] * 255.0]))
    y = jnp.asarray([ys[1], ys[0]])
    out = []
    for name, atk, kw in (
            ("pgd", attacks.pgd(f, steps=6), {"eps": jnp.full(2, 0.3)}),
            ("apgd", attacks.apgd(f, steps=6), {"eps": jnp.full(2, 0.3)}),
            ("apgd_targeted", attacks.apgd_targeted(f, steps=6, n_targets=2),
             {"eps": jnp.full(2, 0.3)}),
            ("fab", attacks.fab(f, steps=6), {}),
            ("square", attacks.square(f, queries=24), {"eps": jnp.full(2, 0.3)})):
        try:
            r = jax.jit(jax.vmap(atk))(x, y, key=_keys(2), **kw)
            robust = bool(r.clean_correct[1]) and not bool(r.success[1])
            out.append(f"{name}: clean_correct={bool(r.clean_correct[1])} "
                       f"success={bool(r.success[1])} robust={robust}")
        except Exception as e:  # noqa: BLE001
            out.append(f"{name}: {_exc(e)}")
    return "; ".join(out), ("tests/attacks/test_contract.py::test_invalid_input_is_never_robust_"
                            "nor_a_success_under_jit_vmap")


def case_checked_vmap():
    """attacks.checked(jax.vmap(fab/square)) on a batch with one invalid row."""
    f, xs, ys = _linear()
    x = jnp.asarray(np.stack([xs[1], xs[0] * 255.0]))
    y = jnp.asarray([ys[1], ys[0]])
    out = []
    for name, atk, kw in (("fab", attacks.fab(f, steps=4), {}),
                          ("square", attacks.square(f, queries=8), {"eps": jnp.full(2, 0.3)})):
        try:
            attacks.checked(jax.vmap(atk))(x, y, key=_keys(2), **kw)
            out.append(f"{name}: no error")
        except Exception as e:  # noqa: BLE001
            out.append(f"{name}: {_exc(e, 90)}")
    return "; ".join(out), ("tests/attacks/test_contract.py::test_invalid_input_is_never_robust_"
                            "nor_a_success_under_jit_vmap (checked part)")


def case_evaluator_validation():
    """AutoAttackEvaluator(fn, attacks=()) and (version='rand', attacks=['fab']) vs autoattack."""
    from advjax.attacks.evaluate import AutoAttackEvaluator
    f, _, _ = _mlp()
    out = []
    for kw in (dict(attacks=()), dict(version="rand", attacks=["fab"])):
        for who, ctor in (("evaluator", AutoAttackEvaluator), ("autoattack", attacks.autoattack)):
            try:
                ctor(f, **kw)
                res = "accepted"
            except Exception as e:  # noqa: BLE001
                res = _exc(e, 60)
            out.append(f"{who}({kw}): {res}")
    return "; ".join(out), ("tests/attacks/test_evaluate.py::test_the_evaluator_validates_as_"
                            "autoattack_does")


def case_state_path_model_identity():
    """Model A (the MLP), then with A's state_path: B1 = A with stop_gradient (the SAME logits,
    zero input gradients) and B2 = 2 * B1 (the same predictions, other logits). What B1/B2 report
    vs B evaluated from scratch (zero gradients: APGD breaks nothing)."""
    from advjax.attacks.evaluate import evaluate
    f, xs, ys = _mlp()

    def b1(x):
        return f(jax.lax.stop_gradient(x))

    def b2(x):
        return 2.0 * f(jax.lax.stop_gradient(x))

    key = jax.random.key(0)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = evaluate(b2, xs, ys, eps=0.15, key=key, **_eval_kw())
        out.append(f"B from scratch robust {_ra(fresh)}")
        for name, g in (("B1 (same logits)", b1), ("B2 (2x logits)", b2)):
            with tempfile.TemporaryDirectory() as d:
                state = Path(d) / "aa_state.npz"
                a = evaluate(f, xs, ys, eps=0.15, key=key, state_path=state, **_eval_kw())
                try:
                    b = evaluate(g, xs, ys, eps=0.15, key=key, state_path=state, **_eval_kw())
                    out.append(f"{name} after A (robust {_ra(a)}) with A's state_path: robust "
                               f"{_ra(b)}, no error")
                except Exception as e:  # noqa: BLE001
                    out.append(f"{name} after A with A's state_path: {_exc(e, 70)}")
    return ("; ".join(out),
            "tests/attacks/test_evaluate.py::test_a_model_with_the_same_predictions_but_other_"
            "logits_is_refused; tests/attacks/test_autoattack.py::test_state_belongs_to_the_"
            "evaluation_that_made_it")


def _ra(ev):
    r = ev.robust_accuracy
    return f"{float(list(r.values())[-1]):.3f}" if isinstance(r, dict) else f"{float(r):.3f}"


def case_prob_pgd20():
    """PGD-20 (L-inf 0.3, step 0.025) on the PGD-trained LeNet5, logits vs softmax probabilities,
    32 MNIST test images. (L-inf PGD takes the sign of the gradient, so probabilities change it
    only where the gradient underflows to 0; the fix is the warning, see prob_warns.)"""
    from advjax.data.local import load_mnist_all
    from advjax.models.adapters import linen_logits_fn
    from advjax.models.advertorch import load_lenet5
    data_dir = Path(os.environ.get("ADVJAX_DATA_DIR", "/work/shared/data"))
    module, variables = load_lenet5(data_dir / "advertorch-lenet5" / "lenet5_mnist.npz",
                                    "advtrained")
    data = load_mnist_all()
    n = 32
    xs, ys = jnp.asarray(data.images[:n]), jnp.asarray(data.labels[:n])
    f = linen_logits_fn(module, variables)
    out = []
    for name, fn in (("logits", f), ("probabilities", lambda x: jax.nn.softmax(f(x)))):
        atk = attacks.pgd(fn, steps=20, step_size=0.025)
        r = jax.jit(jax.vmap(atk))(xs, ys, eps=jnp.full((n,), 0.3), key=_keys(n))
        out.append(f"{name} {float(jnp.mean(r.clean_correct & ~r.success)):.3f}")
    return "PGD-20 robust accuracy: " + ", ".join(out), "(model property; see prob_warns)"


def case_prob_warns():
    """evaluate() of a model returning saturated probabilities: does it warn / record a check?"""
    from advjax.attacks.evaluate import evaluate
    f, xs, ys = _mlp()

    def probs(x):
        return jax.nn.softmax(1e4 * f(x))

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ev = evaluate(probs, xs, ys, eps=0.05, key=jax.random.key(1), **_eval_kw())
    msgs = [str(m.message)[:60] for m in w if "softmax" in str(m.message).lower()
            or "probab" in str(m.message).lower()]
    checks = [c.name for c in getattr(ev, "checks", ()) if getattr(c, "tripped", False)]
    return (f"warnings about probabilities: {len(msgs)} {msgs[:1]}; tripped checks in result: "
            f"{checks if hasattr(ev, 'checks') else 'no checks field'}",
            "tests/attacks/test_evaluate.py::test_masking_checks_are_run_recorded_and_warned")


def case_square_nchw():
    """Square on the same linear model behind a transpose, fed NCHW (3, 6, 5) without a layout,
    vs HWC (6, 5, 3): success counts and max |x_adv difference| (after the transpose back)."""
    rng = np.random.default_rng(0)
    W = jnp.asarray(rng.normal(size=(6 * 5 * 3, 4)), jnp.float32)
    b = jnp.asarray(rng.normal(size=4) * 0.1, jnp.float32)

    def hwc_fn(x):
        return x.reshape(-1) @ W + b

    def chw_fn(x):
        return hwc_fn(jnp.moveaxis(x, 0, -1))

    n = 32
    xs = jnp.asarray(rng.uniform(0.2, 0.8, size=(n, 6, 5, 3)), jnp.float32)
    ys = jnp.argmax(jax.vmap(hwc_fn)(xs), -1)
    keys = jax.random.split(jax.random.key(0), n)
    eps = jnp.full((n,), 0.05)
    r_hwc = jax.jit(jax.vmap(attacks.square(hwc_fn, queries=40)))(xs, ys, eps=eps, key=keys)
    r_chw = jax.jit(jax.vmap(attacks.square(chw_fn, queries=40)))(
        jnp.moveaxis(xs, -1, 1), ys, eps=eps, key=keys)
    diff = float(jnp.max(jnp.abs(jnp.moveaxis(r_chw.x_adv, 1, -1) - r_hwc.x_adv)))
    try:
        attacks.square(lambda x: x.reshape(-1)[:4], queries=4)(
            jnp.full((3, 4, 3), 0.5), jnp.int32(0), eps=0.1, key=jax.random.key(0))
        amb = "ambiguous (3,4,3) image accepted"
    except Exception as e:  # noqa: BLE001
        amb = f"ambiguous (3,4,3): {_exc(e, 50)}"
    return (f"robust HWC {1 - float(r_hwc.success.mean()):.3f} vs CHW-no-layout "
            f"{1 - float(r_chw.success.mean()):.3f}, max|dx_adv| {diff:.3g}; {amb}",
            "tests/attacks/test_square.py::test_layout_is_explicit_or_unambiguous")


_RNG = np.random.default_rng(0)
_CW = jnp.asarray(_RNG.normal(size=(3, 3, 1, 4)) * 0.5, jnp.float32)
_DW = jnp.asarray(_RNG.normal(size=(6 * 6 * 4, K)) * 0.3, jnp.float32)


def _conv(x, w):
    return lax.conv_general_dilated(x[None], w, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]


def case_custom_vjp_conv():
    """pgd on a model with a custom_vjp (and custom_jvp) function around a convolution (CPU)."""
    @jax.custom_vjp
    def block(x):
        return jnp.tanh(_conv(x, _CW))

    def fwd(x):
        return block(x), x

    def bwd(x, g):
        return jax.vjp(lambda v: jnp.tanh(_conv(v, _CW)), x)[1](g)

    block.defvjp(fwd, bwd)

    @jax.custom_jvp
    def jblock(x):
        return jnp.tanh(_conv(x, _CW))

    @jblock.defjvp
    def _(primals, tangents):
        return jax.jvp(lambda v: jnp.tanh(_conv(v, _CW)), primals, tangents)

    xs = jnp.asarray(np.random.default_rng(1).uniform(size=(4, 6, 6, 1)), jnp.float32)
    out = []
    for name, blk in (("custom_vjp", block), ("custom_jvp", jblock)):
        def f(x, blk=blk):
            return blk(x).reshape(-1) @ _DW
        ys = jnp.argmax(jax.vmap(f)(xs), -1)
        try:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                r = jax.jit(jax.vmap(attacks.pgd(f, steps=5)))(xs, ys, eps=jnp.full(4, 0.1),
                                                               key=_keys(4))
            out.append(f"{name}: ran, success {int(r.success.sum())}/4, warnings "
                       f"{[str(m.message)[:40] for m in w][:1]}")
        except Exception as e:  # noqa: BLE001
            out.append(f"{name}: {_exc(e, 90)}")
    return "; ".join(out), ("tests/lowering/test_public_api.py::test_custom_derivative_around_a_"
                            "conv_runs_native_with_a_warning")


def case_reused_attack_after_params_change():
    """One pgd object; the params dict it closes over is scaled; max |logit difference| of the
    reused object (eager, and in a brand-new jit) vs a freshly built attack."""
    params = {"w": _CW}

    def f(x):
        return jnp.tanh(_conv(x, params["w"])).reshape(-1) @ _DW

    xs = jnp.asarray(np.random.default_rng(2).uniform(size=(4, 6, 6, 1)), jnp.float32)
    ys = jnp.argmax(jax.vmap(f)(xs), -1)
    kw = dict(eps=jnp.full(4, 0.05), key=_keys(4))
    atk = attacks.pgd(f, steps=3)
    jax.vmap(atk)(xs, ys, **kw)                         # first use
    params["w"] = params["w"] * -1.7                    # the model changes
    fresh = jax.vmap(attacks.pgd(f, steps=3))(xs, ys, **kw)
    eager = jax.vmap(atk)(xs, ys, **kw)
    jitted = jax.jit(jax.vmap(atk))(xs, ys, **kw)
    d1 = float(jnp.max(jnp.abs(eager.logits - fresh.logits)))
    d2 = float(jnp.max(jnp.abs(jitted.logits - fresh.logits)))
    return (f"max|logits reused - fresh|: eager {d1:.3g}, new jit {d2:.3g}",
            "tests/lowering/test_trace_cache.py::test_a_changed_closure_is_seen_eagerly_and_in_"
            "a_new_jit (+ test_an_nnx_module_updated_in_place_is_seen)")


_EW = np.array([[1.0, -1.0]], np.float32)
_EB = np.array([-0.3, 0.3], np.float32)
_E3 = np.float32(0.3)


def _edge_model(x):
    return x.reshape(-1) @ jnp.asarray(_EW) + jnp.asarray(_EB)


def case_accuracy_vs_eps_float32():
    """Example broken at exactly float32(0.3) (closed form): accuracy_vs_eps at [0.29, 0.3, 0.31]
    vs the truth from running the attack at each budget."""
    from advjax.attacks.min_eps import accuracy_vs_eps, min_eps
    x, y = jnp.zeros((1,), jnp.float32), jnp.asarray(1)
    atk = attacks.fgsm(_edge_model)
    e, _ = jax.jit(min_eps(atk, eps_max=0.6, steps=12))(x, y, key=jax.random.key(0))
    grid = [0.29, 0.3, 0.31]
    truth = [float(not bool(atk(x, y, eps=jnp.float32(g)).success)) for g in grid]
    curve = accuracy_vs_eps(np.asarray(e)[None], grid)
    return (f"eps_min {float(e)!r}; curve {list(np.round(curve, 3))} vs truth {truth}",
            "tests/attacks/test_min_eps.py::test_curve_counts_an_example_broken_at_exactly_the_"
            "grid_budget")


def case_min_eps_midpoint():
    """An attack failing at eps_max = 1 (reported as failing for eps >= 0.8) but succeeding at
    the first midpoint 0.5: min_eps's eps and success."""
    from advjax.attacks.min_eps import min_eps
    inner = attacks.fgsm(_edge_model)

    def band(x, label, *, eps, key=None):
        r = inner(x, label, eps=eps, key=key)
        return r.replace(success=r.success & (eps < 0.8))

    x, y = jnp.zeros((1,), jnp.float32), jnp.asarray(1)
    e, r = jax.jit(jax.vmap(min_eps(band, eps_max=1.0, steps=12)))(
        x[None], y[None], key=jax.random.split(jax.random.key(0), 1))
    return (f"eps_min {float(e[0]):.6g} (truth ~0.3), success {bool(r.success[0])}",
            "tests/attacks/test_min_eps.py::test_a_success_below_eps_max_is_kept_when_eps_max_"
            "fails")


def case_check_square_plus():
    """check_square with version='plus' stage order (Square not last): Square cut 0.5 -> 0.4,
    later stages 0.3."""
    from advjax.attacks import diagnostics as dg
    plus = {"apgd-ce": 0.5, "apgd-dlr": 0.5, "fab": 0.5, "square": 0.4, "apgd-t": 0.3,
            "fab-t": 0.3}
    sq = dg.check_square(plus)
    zero = {"apgd-ce": 1.0, "apgd-dlr": 1.0, "fab": 1.0, "square": 0.58, "apgd-t": 0.58,
            "fab-t": 0.58}
    sq2 = dg.check_square(zero)
    return (f"tripped={sq.tripped} value={sq.value:.3g}; zero-gradient 1.0 -> 0.58: "
            f"tripped={sq2.tripped}",
            "tests/attacks/test_diagnostics.py::test_square_is_compared_with_the_stage_just_"
            "before_it")


def case_nan_logits():
    """evaluate of a model that is NaN at 3 clean points (label 0) and off the clean grid."""
    from advjax.attacks.evaluate import evaluate
    f, xs, ys = _mlp()
    xs = xs.copy()
    labels = ys.copy()
    nan_clean = np.arange(len(xs)) < 3
    xs[nan_clean, 0, 0, 0] = 1.0
    labels[nan_clean] = 0
    top = float(xs[~nan_clean].max())

    def model(x):
        bad = (x[0, 0, 0] > 0.99) | jnp.any(x > top + 1e-3)
        return jnp.where(bad, jnp.nan, f(x))

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ev = evaluate(model, xs, labels, eps=0.08, key=jax.random.key(2), **_eval_kw())
    cc = np.asarray(ev.clean_correct)
    warned = [str(m.message)[:40] for m in w if "finite" in str(m.message).lower()
              or "nan" in str(m.message).lower()]
    return (f"clean acc {cc.mean():.3f} (NaN-clean rows counted correct: "
            f"{int(cc[nan_clean].sum())}/3), robust {_ra(ev)}, warned {warned[:1]}",
            "tests/attacks/test_evaluate.py::test_nonfinite_logits_are_invalid_never_a_success; "
            "tests/attacks/test_result.py::test_nan_clean_logits_are_flagged_never_robust")


def case_flat_inputs():
    """evaluate (standard stages) of a model on flat 16-vectors."""
    from advjax.attacks.evaluate import evaluate
    f, xs, ys = _mlp()
    flat = xs.reshape(len(xs), -1)
    t = time.time()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluate(lambda v: f(v.reshape(SHAPE)), flat, ys, eps=0.05, key=jax.random.key(0),
                     steps=4, queries=30, n_targets=2, batch_size=16)
        res = "completed"
    except Exception as e:  # noqa: BLE001
        res = _exc(e, 90)
    return (f"{res} after {time.time() - t:.1f}s",
            "tests/attacks/test_evaluate.py::test_flat_inputs_are_refused_up_front_for_square")


def case_rbg_key():
    """evaluate with key = jax.random.key(5, impl='rbg')."""
    from advjax.attacks.evaluate import evaluate
    f, xs, ys = _mlp()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ev = evaluate(f, xs, ys, eps=0.08, key=jax.random.key(5, impl="rbg"), **_eval_kw())
        res = f"ran, robust {_ra(ev)}"
    except Exception as e:  # noqa: BLE001
        res = _exc(e, 90)
    return res, ("tests/attacks/test_evaluate.py::test_a_key_of_another_prng_implementation_is_"
                 "kept; tests/attacks/test_contract.py::test_typed_keys_keep_their_implementation")


def case_fab_tiny_weight():
    """FAB's hyperplane-box projection, 64 coordinates, one weight 1e-12: share of the way to the
    hyperplane reached, (w.d)/(b - w.p) (1 = exact), per norm."""
    from advjax.attacks.fab import project_hyperplane_box
    rng = np.random.default_rng(0)
    n = 64
    w = rng.normal(size=n)
    w[0] = 1e-12
    p = rng.uniform(0.0, 1.0, size=n)
    p[1:] = 1 - 0.02 * rng.uniform(size=n - 1)
    b = w @ p + 0.0125 * np.abs(w).sum()
    out = []
    for norm in ("l2", "linf"):
        d = np.asarray(project_hyperplane_box(jnp.asarray(p, jnp.float32),
                                              jnp.asarray(w, jnp.float32), jnp.float32(b), 0.0,
                                              1.0, norm), np.float64)
        out.append(f"{norm} {(w @ d) / (b - w @ p):.4f}")
    return "reached " + ", ".join(out), ("tests/attacks/test_fab.py::test_projection_reaches_"
                                         "the_hyperplane_with_a_tiny_weight")


def _exc(e, n=120):
    return f"raised {type(e).__name__}: {str(e).splitlines()[0][:n] if str(e) else ''}"


CASES = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


def main(argv):
    import advjax
    print(f"# advjax from {Path(advjax.__file__).parent}; jax {jax.__version__}", flush=True)
    for name in argv or list(CASES):
        t = time.time()
        try:
            what, test = CASES[name]()
        except Exception as e:  # noqa: BLE001
            what, test = _exc(e), "-"
        print(f"{name} | {what} | [{test}] ({time.time() - t:.1f}s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
