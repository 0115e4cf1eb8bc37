"""Probe: robust accuracy of each masked defence of :mod:`advjax.models.masked` on the MNIST
LeNet5, with and without BPDA, beside the undefended model (its truth). Not a test module (no
``test_`` prefix); the assertions live in ``tests/attacks/test_bpda.py``.

Run from the repository root (needs ``$ADVJAX_DATA_DIR``)::

    python -m tests.attacks.probe_masked_defences [--n 64] [--eps 0.1] [--steps 20]
        [--which clntrained] [--out benchmarks/results/masked_defences_probe.json]

Prints one line per (model, attack) and writes a JSON with the machine, versions and date.
Every attack compiles once for all models (the models are branches of one ``lax.switch``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp

from advjax.attacks import apgd, pgd
from advjax.data.local import load_mnist_all
from advjax.models import linen_logits_fn, load_lenet5, masked


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--which", default="clntrained")
    p.add_argument("--out", default="benchmarks/results/masked_defences_probe.json")
    a = p.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)
    data_dir = Path(os.environ.get("ADVJAX_DATA_DIR", "/work/shared/data"))
    data = load_mnist_all()
    xs, ys = jnp.asarray(data.images[:a.n]), jnp.asarray(data.labels[:a.n])
    module, variables = load_lenet5(data_dir / "advertorch-lenet5" / "lenet5_mnist.npz", a.which)
    f = linen_logits_fn(module, variables)
    q, t = masked.quantized(f, 256), masked.thermometer(f, 256)
    t16 = masked.thermometer(f, 16)
    am, kw = masked.argmax_inside(f), masked.kwta_lenet5(variables, 20)
    models = {"undefended": f, "quantized256": q.defended, "quantized256_bpda": q.bpda,
              "thermometer256": t.defended, "thermometer256_bpda": t.bpda,
              "thermometer16": t16.defended, "thermometer16_bpda": t16.bpda,
              "argmax": am.defended, "argmax_bpda": am.bpda,
              "zero_gradient": masked.mask_gradients(f),
              "kwta20": kw.defended, "kwta20_bpda": kw.bpda}
    names, fns = list(models), list(models.values())
    keys = jax.random.split(jax.random.key(0), a.n)
    eps = jnp.full((a.n,), a.eps)
    attacks = {f"apgd-ce-{a.steps}": lambda fn: apgd(fn, steps=a.steps),
               f"pgd-{a.steps}": lambda fn: pgd(fn, steps=a.steps, step_size=a.eps / 8)}
    rows = []
    for attack_name, make in attacks.items():
        @jax.jit
        def run(idx, make=make):
            r = jax.vmap(make(lambda x: jax.lax.switch(idx, fns, x)))(xs, ys, eps=eps, key=keys)
            return jnp.mean(r.clean_correct), jnp.mean(r.clean_correct & ~r.success)

        start = time.time()
        for i, name in enumerate(names):
            clean, robust = (float(v) for v in run(i))
            rows.append({"model": name, "attack": attack_name, "clean": clean, "robust": robust})
            print(f"{name:22s} {attack_name:12s} clean {clean:.4f} robust {robust:.4f}",
                  flush=True)
        print(f"  ({attack_name}: {time.time() - start:.0f} s with compilation)", flush=True)
    out = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, "
                      f"load {os.getloadavg()[0]:.1f}",
           "versions": {"jax": jax.__version__, "python": platform.python_version()},
           "settings": {"n": a.n, "eps": a.eps, "norm": "linf", "steps": a.steps,
                        "model": f"advertorch LeNet5 {a.which}", "data": "MNIST test, first n",
                        "key": "split(key(0), n)"},
           "rows": rows}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
