"""Square-L1: advjax's start and proposal against the official AutoAttack code, same draws.

The official ``SquareAttack(norm='L1')`` (``autoattack/square.py``) is run for one query
(``n_queries=1``) with its random draws replaced by advjax's: the 25 start windows' transposes and
channel signs are the ones :func:`advjax.attacks.square.l2_init` (``norm="l1"``) draws from the
same key, and the first proposal's windows, transpose and signs are fixed numbers. The model is a
constant (every point is scored, nothing accepted matters); the two points it scores are the
official start and the official first proposal. advjax computes the same two points
(:func:`advjax.attacks.square.l1_start`, :func:`advjax.attacks.square.l1_proposal`); the
differences are printed, and ``--fixture`` writes the cases (inputs, draws and the official
points) as JSON for ``tests/attacks/test_square_l1.py``, which then needs no PyTorch.

``--alone N`` instead runs the Square-L1 stage alone with AutoAttack's settings (5000 queries,
``p_init`` 0.8, one restart, no schedule rescaling) on the PGD-trained LeNet5 and the first N MNIST
test images, advjax (``evaluate(..., attacks=("square",))``) and the official ``SquareAttack``
(seed 0), and compares the robust accuracy image by image: in the full ensemble Square only sees
the few images the gradient stages left, this gives it all of them.

Usage (the peers' venv: PyTorch and the official autoattack; advjax from this checkout):
  PYTHONPATH=. /work/venv-bench/bin/python benchmarks/square_l1_official_check.py \
      --fixture tests/attacks/square_l1_official.json
  PYTHONPATH=. ADVJAX_DATA_DIR=... /work/venv-bench/bin/python \
      benchmarks/square_l1_official_check.py --alone 64 --eps 5 --out benchmarks/results/X.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

import advjax  # noqa: F401  (first: its XLA:CPU option must precede JAX's first backend)

# (name, H, W, C, eps, p_init, seed, box_margin): MNIST-sized and CIFAR-sized-channel images; eps
# small (the start is projected onto the ball surface) and large (the 25 windows' mass, 25 C, is
# below eps and the free budget term max(eps - ||d||_1, 0) / C is active); p_init sets the first
# side s = round(sqrt(p_init H W)) made odd.
CASES = [
    ("mnist_eps5", 28, 28, 1, 5.0, 0.8, 0, 0.0),
    ("mnist_eps40_small_window", 28, 28, 1, 40.0, 0.05, 1, 0.0),
    ("rgb_eps3", 10, 10, 3, 3.0, 0.3, 2, 0.0),
    ("rgb_eps200_interior", 10, 10, 3, 200.0, 0.1, 3, 0.3),
]


def jax_start_draws(seed: int, h: int, w: int, c: int):
    """The transposes and signs :func:`l2_init` draws from ``key(seed)`` (its key use, copied)."""
    import jax
    import jax.numpy as jnp

    s0 = max(h // 5, 1)
    sp = (h - s0 * 5) // 2
    n = len([i for i in range(h // s0) if sp + i * s0 < h]) * \
        len([j for j in range(w // s0) if sp + j * s0 < w])
    keys = jax.random.split(jax.random.key(seed), n)
    trans, signs = [], []
    for k in keys:
        k_t, k_s = jax.random.split(k)
        trans.append(bool(jax.random.bernoulli(k_t)))
        signs.append(np.asarray(jnp.where(jax.random.bernoulli(k_s, 0.5, (c,)), 1.0, -1.0)))
    return trans, signs


def official_points(x_hwc, eps, p_init, start_trans, start_signs, draws):
    """The official start and first proposal (HWC numpy) with the given draws."""
    import torch
    from autoattack import square as official

    x = torch.tensor(np.ascontiguousarray(np.moveaxis(x_hwc, -1, 0)[None]), dtype=torch.float32)
    seen = []

    def predict(z):
        seen.append(z.clone())
        return torch.tensor([[1.0, 0.0]]).repeat(z.shape[0], 1)

    a = official.SquareAttack(predict, norm="L1", n_queries=1, eps=eps, p_init=p_init,
                              resc_schedule=False, device="cpu")
    a.init_hyperparam(x)
    c = x.shape[1]
    choices = [torch.tensor(sg, dtype=torch.float32).view(1, c, 1, 1) for sg in start_signs]
    choices.append(torch.tensor(draws["signs"], dtype=torch.float32).view(1, c, 1, 1))
    ints = [draws["vh"], draws["vw"], draws["vh2"], draws["vw2"]]
    rands = [1.0 if t else 0.0 for t in start_trans] + [1.0 if draws["transpose"] else 0.0]
    a.random_choice = lambda shape: choices.pop(0)
    a.random_int = lambda low=0, high=1, shape=(1,): torch.tensor([ints.pop(0)])
    rand = torch.rand

    def fake_rand(shape, *args, **kw):     # eta's transpose coin, torch.rand([1]) > 0.5
        if list(shape) == [1]:
            return torch.tensor([rands.pop(0)])
        return rand(shape, *args, **kw)

    torch.rand = fake_rand
    try:
        a.attack_single_run(x, torch.tensor([0]))
    finally:
        torch.rand = rand
    assert not choices and not ints and not rands, "draws left unused: the official order moved"
    assert len(seen) == 2
    return [np.moveaxis(z[0].numpy(), 0, -1) for z in seen]


def run_case(name, h, w, c, eps, p_init, seed, margin):
    import jax.numpy as jnp

    from advjax.attacks.square import _side, l1_proposal, l1_start

    rng = np.random.default_rng(seed)
    x = rng.uniform(margin, 1 - margin, (h, w, c)).astype(np.float32)
    if margin == 0.0:                      # some pixels on the box faces, as in MNIST
        x[rng.uniform(size=x.shape) < 0.4] = 0.0
    s = int(_side(jnp.float32(p_init), h * w, 3, min(h, w), odd=True))
    top = max(h - s, 1)
    draws = dict(s=s, vh=int(rng.integers(0, top)), vw=int(rng.integers(0, max(w - s, 1))),
                 vh2=int(rng.integers(0, top)), vw2=int(rng.integers(0, max(w - s, 1))),
                 transpose=bool(rng.integers(0, 2)),
                 signs=[float(v) for v in rng.choice([-1.0, 1.0], c)])
    trans, signs = jax_start_draws(seed, h, w, c)
    import jax
    off_start, off_prop = official_points(x, eps, p_init, trans, signs, draws)
    start = np.asarray(l1_start(jax.random.key(seed), jnp.asarray(x), jnp.float32(eps), 0.0, 1.0))
    prop = np.asarray(l1_proposal(jnp.asarray(x), jnp.asarray(off_start), jnp.float32(eps),
                                  jnp.int32(s), *(jnp.int32(draws[k]) for k in
                                                  ("vh", "vw", "vh2", "vw2")),
                                  jnp.bool_(draws["transpose"]),
                                  jnp.asarray(draws["signs"], jnp.float32), 0.0, 1.0))
    row = dict(name=name, h=h, w=w, c=c, eps=eps, p_init=p_init, seed=seed, box_margin=margin,
               draws=draws, x=x.tolist(), official_start=off_start.tolist(),
               official_proposal=off_prop.tolist(),
               max_abs_diff_start=float(np.abs(start - off_start).max()),
               max_abs_diff_proposal=float(np.abs(prop - off_prop).max()),
               official_l1=[float(np.abs(off_start - x).sum()), float(np.abs(off_prop - x).sum())],
               advjax_l1=[float(np.abs(start - x).sum()), float(np.abs(prop - x).sum())])
    return row


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95 % interval of a proportion ``k / n``."""
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(mid - half), float(mid + half)


def square_alone(n: int, eps: float, seeds: int = 1, indices=None) -> dict:
    """Square-L1 alone, both frameworks, the same weights and images (see the module doc):
    official seeds ``0 .. seeds-1``, advjax keys ``key(0) .. key(seeds-1)``; ``indices``
    restricts the first ``n`` images to those."""
    import sys

    import jax
    import torch
    from autoattack.square import SquareAttack

    sys.path.insert(0, str(Path(__file__).parent))
    from autoattack_parity import _flax_model, _torch_net_and_data

    from advjax.attacks.evaluate import AutoAttackEvaluator
    from advjax.models import linen_logits_fn

    net, x, y = _torch_net_and_data("lenet5adv", n)
    if indices is not None:
        x, y = x[list(indices)], y[list(indices)]
    m = len(y)
    module, variables = _flax_model("lenet5adv")
    xs, ys = np.moveaxis(x.numpy(), 1, -1), y.numpy()
    evaluator = AutoAttackEvaluator(linen_logits_fn(module, variables), norm="l1",
                                    attacks=("square",), batch_size=m)
    with torch.no_grad():
        clean = (net(x).argmax(1) == y).numpy()
    runs = []
    for seed in range(seeds):
        t0 = time.perf_counter()
        sq = SquareAttack(net, norm="L1", n_queries=5000, eps=eps, p_init=0.8, n_restarts=1,
                          seed=seed, resc_schedule=False, device="cpu")
        with torch.no_grad():
            adv = sq.perturb(x, y)
            off_robust = (net(adv).argmax(1) == y).numpy()
        off_s = time.perf_counter() - t0
        off_l1 = (adv - x).abs().flatten(1).sum(1).numpy()
        t0 = time.perf_counter()
        ev = evaluator(xs, ys, eps=eps, key=jax.random.key(seed))
        adv_s = time.perf_counter() - t0
        adv_robust = np.asarray(ev.clean_correct) & (np.asarray(ev.broken_by) < 0)
        runs.append(dict(
            seed=seed,
            official=dict(robust=int(off_robust.sum()), ci95=wilson(int(off_robust.sum()), m),
                          seconds=off_s, max_l1=float(off_l1.max()),
                          robust_flags="".join("1" if f else "0" for f in off_robust)),
            advjax=dict(robust=int(adv_robust.sum()), ci95=wilson(int(adv_robust.sum()), m),
                        seconds=adv_s, compile_seconds=ev.compile_seconds,
                        robust_flags="".join("1" if f else "0" for f in adv_robust)),
            only_advjax_robust=int((adv_robust & ~off_robust).sum()),
            only_official_robust=int((off_robust & ~adv_robust).sum())))
        print(json.dumps(runs[-1]), flush=True)
    return dict(n=n, indices=None if indices is None else list(indices), images=m, eps=eps,
                clean=int(clean.sum()), runs=runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", type=Path, default=None)
    ap.add_argument("--alone", type=int, default=0, metavar="N")
    ap.add_argument("--eps", type=float, default=5.0)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--indices", type=str, default=None, help="comma-separated image indices")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import jax
    import torch

    if args.alone:
        idx = None if args.indices is None else [int(i) for i in args.indices.split(",")]
        res = square_alone(args.alone, args.eps, args.seeds, idx)
        res["meta"] = dict(machine=platform.platform(), python=platform.python_version(),
                           jax=jax.__version__, torch=torch.__version__,
                           date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           model="advertorch PGD-trained LeNet5 (lenet5adv)",
                           settings="n_queries 5000, p_init 0.8, 1 restart, no rescaling")
        if args.out:
            args.out.write_text(json.dumps(res, indent=1))
        return

    rows = [run_case(*case) for case in CASES]
    for r in rows:
        print(f"{r['name']:28s} s={r['draws']['s']:2d}  "
              f"max|diff| start {r['max_abs_diff_start']:.2e}"
              f"  proposal {r['max_abs_diff_proposal']:.2e}  L1 official {r['official_l1']}"
              f"  advjax {r['advjax_l1']}")
    meta = dict(machine=platform.platform(), python=platform.python_version(),
                jax=jax.__version__, torch=torch.__version__,
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                source="official autoattack/square.py SquareAttack(norm='L1'), n_queries=1, "
                       "draws replaced; benchmarks/square_l1_official_check.py")
    if args.fixture:
        args.fixture.write_text(json.dumps(dict(meta=meta, cases=rows)))


if __name__ == "__main__":
    main()
