"""Attack throughput, compile time, memory and strength: advjax vs the peers, same weights.

Side by side in one run on the same machine (``--suite cnn``, the default):

* PGD-40 L∞ (eps 0.3, step 0.01, no random start) on advertorch's LeNet5 pair, both as advjax's
  zoo model (``lenet5`` / ``lenet5adv``) and as a plain user-written Flax model with ``nn.Conv``
  and ``nn.max_pool`` and the same weights (``flaxlenet``); PGD-10 (eps 8/255, step 2/255) and
  APGD-100 (eps 8/255) on a Woods et al. (2019) ResNet-44 (``resnet44``, CIFAR-10 test head).
  advjax runs twice: ``advjax`` (``advjax.lowering.lower_convs`` on the logits_fn: convolutions as
  GEMMs on CPU) and ``advjax-native`` (XLA's convolutions), vs torchattacks, foolbox 3 and ART
  (PyTorch models with the same weights).

``--suite all`` adds the earlier rows:

* PGD-40 (L∞, eps 0.3, step 0.01, no random start — advertorch's published LeNet5 setting) on
  advertorch's clean-trained (``lenet5``) and PGD-trained (``lenet5adv``, published robust
  accuracy 93.2 %) LeNet5 and on a Szegedy FC100-100-10 MLP: advjax
  (``jax.jit(jax.vmap(pgd))``) vs torchattacks, foolbox 3 and ART.
* Szegedy's box-constrained L-BFGS minimum-distortion search: advjax ``lbfgs`` (batched, pure
  JAX) vs scipy's L-BFGS-B called once per example on the PyTorch model, with the same c search
  (initial 1e-2, ×10 until success, then bisection) and iteration budget.

Each measurement runs in its own subprocess, so its peak resident memory (``ru_maxrss``) is its own.
Reported: compile (first-call) time, steady-state images/second, robust accuracy / mean distortion,
achieved GFLOP/s (forward + input-gradient FLOPs from XLA's cost analysis × steps) and the fraction
of the machine's fp32 matmul roofline (measured here), and ratios advjax / peer.

Usage (needs ADVJAX_DATA_DIR with mnist-test/, advertorch-lenet5/, cifar10-test-head/ and
woods2019-resnet44/, and the bench extra for the peers; ``--synthetic`` uses random weights and
images instead; rows whose framework is not installed are skipped):
  python benchmarks/attacks.py --n 256 --batch 256 --out benchmarks/results/attacks.json
  python benchmarks/attacks.py --device gpu --quick      # accelerator, < 5 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import advjax  # noqa: F401  (first: its XLA:CPU option must precede JAX's first backend)

PGD = dict(eps=0.3, step=0.01, steps=40)
PGD_CIFAR = dict(eps=8 / 255, step=2 / 255, steps=10)
APGD_CIFAR = dict(eps=8 / 255, steps=100)
LBFGS = dict(initial_const=1e-2, search_steps=5, max_iterations=100, growth=10.0)


# ----------------------------------------------------------------------------- shared set-up

def _mnist(n: int) -> tuple[np.ndarray, np.ndarray]:
    from advjax import data
    ds = data.load("mnist_local", "all", limit=n)
    return np.asarray(ds.images), np.asarray(ds.labels)


def _lenet_jax(which: str = "clntrained"):
    from advjax.models import linen_logits_fn, load_lenet5
    module, variables = load_lenet5(Path(os.environ["ADVJAX_DATA_DIR"]) / "advertorch-lenet5",
                                    which)
    return module, variables, linen_logits_fn(module, variables)


def _mlp_jax(cache: Path):
    """FC100-100-10 (sigmoid) trained for 3 epochs on the local MNIST train split (cached)."""
    import jax
    import optax

    from advjax import train
    from advjax.models import linen_logits_fn, szegedy_model

    module = szegedy_model("FC100-100-10")
    if cache.exists():
        arrays = dict(np.load(cache))
        params = {f"Dense_{i}": {"kernel": arrays[f"k{i}"], "bias": arrays[f"b{i}"]}
                  for i in range(3)}
    else:
        from advjax import data
        ds = data.load("mnist_local", "train")
        state = train.create_train_state(module, jax.random.key(0), ds.images[:1],
                                         optax.adam(1e-3))
        state, _ = train.fit(state, (ds.images, ds.labels), key=jax.random.key(1), epochs=3,
                             batch_size=64, progress=False)
        params = jax.tree.map(np.asarray, state.params)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **{f"k{i}": params[f"Dense_{i}"]["kernel"] for i in range(3)},
                 **{f"b{i}": params[f"Dense_{i}"]["bias"] for i in range(3)})
    variables = {"params": params}
    return module, variables, linen_logits_fn(module, variables)


def _torch_model(model_name: str, cache: Path):
    import torch
    from torch import nn

    torch.set_num_threads(os.cpu_count() or 1)
    if model_name.startswith("lenet5"):
        from advjax.models import load_lenet5_state
        sd = load_lenet5_state(Path(os.environ["ADVJAX_DATA_DIR"]) / "advertorch-lenet5",
                               "advtrained" if model_name == "lenet5adv" else "clntrained")
        net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(3136, 200), nn.ReLU(), nn.Linear(200, 10))
        names = ["0", "3", "7", "9"]
        for src, dst in zip(["conv1", "conv2", "linear1", "linear2"], names, strict=True):
            getattr(net, dst).weight.data = torch.tensor(sd[f"{src}.weight"])
            getattr(net, dst).bias.data = torch.tensor(sd[f"{src}.bias"])
    else:
        _, variables, _ = _mlp_jax(cache)
        p = variables["params"]
        net = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.Sigmoid(), nn.Linear(100, 100),
                            nn.Sigmoid(), nn.Linear(100, 10))
        for i, layer in enumerate([net[1], net[3], net[5]]):
            layer.weight.data = torch.tensor(np.asarray(p[f"Dense_{i}"]["kernel"]).T.copy())
            layer.bias.data = torch.tensor(np.asarray(p[f"Dense_{i}"]["bias"]))
    return net.eval()


def _to_nchw(xs: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(xs.transpose(0, 3, 1, 2))


# ----------------------------------------------------------------------------- CNN suite

CNN_MODELS = ("lenet5", "lenet5adv", "flaxlenet", "resnet44")


def _flax_lenet_module():
    """advertorch's LeNet5 as a user would write it: ``nn.Conv`` and ``nn.max_pool`` only."""
    import flax.linen as nn

    class FlaxLeNet5(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.max_pool(nn.relu(nn.Conv(32, (3, 3), padding=1, name="conv1")(x)), (2, 2),
                            (2, 2))
            x = nn.max_pool(nn.relu(nn.Conv(64, (3, 3), padding=1, name="conv2")(x)), (2, 2),
                            (2, 2))
            x = x.reshape((x.shape[0], -1))
            x = nn.relu(nn.Dense(200, name="linear1")(x))
            return nn.Dense(10, name="linear2")(x)

    return FlaxLeNet5()


def _cnn_data(model: str, n: int, synthetic: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (32, 32, 3) if model == "resnet44" else (28, 28, 1)
    if synthetic:
        return rng.uniform(size=(n, *shape)).astype(np.float32), rng.integers(0, 10, n)
    from advjax import data
    ds = data.load("cifar10_head" if model == "resnet44" else "mnist_local", "all", limit=n)
    xs, ys = np.asarray(ds.images, np.float32), np.asarray(ds.labels)
    if len(xs) < n:  # the CIFAR-10 head has 846 images: repeat to reach n
        idx = np.arange(n) % len(xs)
        xs, ys = xs[idx], ys[idx]
    return xs, ys


RESNET_CHECKPOINTS = ("standard", "adv-train", "all", "robust")  # woods2019-resnet44/*.pt


def _cnn_jax(model: str, synthetic: bool, depth: int, checkpoint: str = "standard"):
    """(module, variables, batched apply ``f(x (B, ...)) -> (B, K)``)."""
    import jax

    from advjax.models import LeNet5, PreActResNet, load_lenet5, load_woods2019
    if model == "resnet44":
        if synthetic:
            module = PreActResNet(depth=depth)
            variables = module.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32),
                                    train=False)
        else:
            module, variables = load_woods2019(
                    Path(os.environ["ADVJAX_DATA_DIR"]) / "woods2019-resnet44"
                    / f"resnet44-{checkpoint}.pt")
        return module, variables, lambda x: module.apply(variables, x, train=False)
    which = "clntrained" if model == "lenet5" else "advtrained"
    if synthetic:
        variables = LeNet5().init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))
    else:
        _, variables = load_lenet5(Path(os.environ["ADVJAX_DATA_DIR"]) / "advertorch-lenet5",
                                   which)
    module = _flax_lenet_module() if model == "flaxlenet" else LeNet5()
    return module, variables, lambda x: module.apply(variables, x)


def _torch_cnn(model: str, variables, module, device: str):
    """The PyTorch twin (NCHW, eval mode) of a CNN with the same (Flax) weights."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    torch.set_num_threads(os.cpu_count() or 1)
    p = variables["params"]
    t = lambda a: torch.tensor(np.asarray(a, np.float32).copy(), device=device)  # noqa: E731
    conv_w = lambda k: t(np.asarray(k).transpose(3, 2, 0, 1))  # noqa: E731  HWIO -> OIHW

    if model != "resnet44":
        # Flax flattens (H, W, C); PyTorch (C, H, W): permute linear1's rows.
        w1 = np.asarray(p["linear1"]["kernel"]).reshape(7, 7, 64, 200).transpose(2, 0, 1, 3)
        weights = {"c1": conv_w(p["conv1"]["kernel"]), "b1": t(p["conv1"]["bias"]),
                   "c2": conv_w(p["conv2"]["kernel"]), "b2": t(p["conv2"]["bias"]),
                   "l1": t(w1.reshape(3136, 200).T), "lb1": t(p["linear1"]["bias"]),
                   "l2": t(np.asarray(p["linear2"]["kernel"]).T), "lb2": t(p["linear2"]["bias"])}

        class Net(torch.nn.Module):
            def forward(self, x):
                w = weights
                h = F.max_pool2d(F.relu(F.conv2d(x, w["c1"], w["b1"], padding=1)), 2)
                h = F.max_pool2d(F.relu(F.conv2d(h, w["c2"], w["b2"], padding=1)), 2)
                h = F.relu(F.linear(h.flatten(1), w["l1"], w["lb1"]))
                return F.linear(h, w["l2"], w["lb2"])

        return Net().eval()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _torch_models import torch_preact_resnet  # ReLU or HHReLU, as the checkpoint says
    return torch_preact_resnet(module, variables, device)


def _attack_settings(model: str, attack: str, steps: int | None) -> dict:
    base = dict(PGD) if model != "resnet44" else (dict(PGD_CIFAR) if attack == "pgd"
                                                  else dict(APGD_CIFAR))
    if steps is not None:
        base["steps"] = steps
    return base


def _peak_memory_mb(device: str, framework: str) -> float:
    if device == "gpu":
        if framework.startswith("advjax"):
            import jax
            stats = jax.devices()[0].memory_stats() or {}
            return stats.get("peak_bytes_in_use", float("nan")) / 2**20
        import torch
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def advjax_cnn_attack(logits_fn, attack: str, cfg: dict, compiler_options: dict | None = None):
    """``jit(vmap(...))`` of the CNN suite's attack: ``run(x (B, ...), y (B,), keys (B,))``
    (``compiler_options``: XLA options of this one program, e.g.
    ``xla_cpu.XLA_DEFAULT_OPTIONS``)."""
    import jax

    from advjax import attacks
    if attack == "pgd":
        atk = attacks.pgd(logits_fn, norm="linf", steps=cfg["steps"], step_size=cfg["step"],
                          random_start=False)
        return jax.jit(jax.vmap(lambda x, y, k: atk(x, y, eps=cfg["eps"])),
                       compiler_options=compiler_options)
    atk = attacks.apgd(logits_fn, norm="linf", steps=cfg["steps"])
    return jax.jit(jax.vmap(lambda x, y, k: atk(x, y, eps=cfg["eps"], key=k)),
                   compiler_options=compiler_options)


def torch_cnn_attack(framework: str, net, attack: str, cfg: dict, batch: int, dev: str,
                     input_shape: tuple[int, ...]):
    """The PyTorch peer's attack of the CNN suite as ``call(x (B, C, H, W), y (B,)) -> x_adv``.

    ``framework``: ``"torchattacks"``, ``"foolbox"`` or ``"art"``; ``attack``: ``"pgd"`` (L-inf,
    no random start) or ``"apgd"`` (CE loss, one restart; not in foolbox); ``cfg`` the suite's
    settings (``eps``, ``step``, ``steps``); ``dev``: ``"cpu"`` or ``"cuda"``; ``input_shape`` one
    image's ``(C, H, W)`` (ART needs it).
    """
    import torch
    eps = cfg["eps"]
    if framework == "torchattacks":
        import torchattacks
        if attack == "pgd":
            atk = torchattacks.PGD(net, eps=eps, alpha=cfg["step"], steps=cfg["steps"],
                                   random_start=False)
        else:
            atk = torchattacks.APGD(net, norm="Linf", eps=eps, steps=cfg["steps"],
                                    n_restarts=1, loss="ce", seed=0)
        call = lambda xb, yb: atk(xb, yb)  # noqa: E731
    elif framework == "foolbox":
        import foolbox as fb
        if attack != "pgd":
            raise ValueError("foolbox has no APGD")
        fmodel = fb.PyTorchModel(net, bounds=(0, 1), device=dev)
        fatk = fb.attacks.LinfPGD(abs_stepsize=cfg["step"], steps=cfg["steps"],
                                  random_start=False)
        call = lambda xb, yb: fatk(fmodel, xb, yb, epsilons=eps)[1]  # noqa: E731
    elif framework == "art":
        from art.estimators.classification import PyTorchClassifier
        clf = PyTorchClassifier(net, loss=torch.nn.CrossEntropyLoss(),
                                input_shape=input_shape, nb_classes=10,
                                clip_values=(0.0, 1.0), device_type=dev)
        if attack == "pgd":
            from art.attacks.evasion import ProjectedGradientDescent
            aatk = ProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=cfg["step"],
                                            max_iter=cfg["steps"], num_random_init=0,
                                            batch_size=batch, verbose=False)
        else:
            from art.attacks.evasion import AutoProjectedGradientDescent
            aatk = AutoProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=2 * eps,
                                                max_iter=cfg["steps"], nb_random_init=1,
                                                batch_size=batch, loss_type="cross_entropy",
                                                verbose=False)
        call = lambda xb, yb: torch.tensor(  # noqa: E731
                aatk.generate(xb.cpu().numpy(), y=yb.cpu().numpy()), device=dev)
    else:
        raise ValueError(framework)
    return call


def measure_cnn(framework: str, model: str, attack: str, n: int, batch: int, repeats: int, *,
                device: str = "cpu", synthetic: bool = False, depth: int = 44,
                steps: int | None = None, checkpoint: str = "standard") -> dict:
    """One row of the CNN suite (run in its own process)."""
    cfg = _attack_settings(model, attack, steps)
    xs, ys = _cnn_data(model, n, synthetic)
    out: dict = {"framework": framework, "model": model, "attack": attack, "n": n,
                 "batch": batch, "steps": cfg["steps"], "device": device}
    module, variables, apply = _cnn_jax(model, synthetic, depth, checkpoint)
    if model == "resnet44" and not synthetic:
        out["checkpoint"] = f"resnet44-{checkpoint}"
    if framework.startswith("advjax"):
        import jax
        import jax.numpy as jnp

        from advjax.lowering import lower_convs

        def logits_fn(x):
            return apply(x[None])[0]

        mode = "native" if framework == "advjax-native" else "auto"
        form = "tangent" if framework == "advjax-tangent" else "auto"
        run = advjax_cnn_attack(lower_convs(logits_fn, mode=mode, form=form), attack, cfg)
        xb, yb = jnp.asarray(xs), jnp.asarray(ys)
        keys = jax.random.split(jax.random.key(0), n)
        results = []

        def go():
            results.clear()
            for i in range(0, n, batch):
                results.append(run(xb[i:i + batch], yb[i:i + batch], keys[i:i + batch]))
            jax.block_until_ready(results)

        first, steady = _time_calls(go, repeats)
        res = jax.tree.map(lambda *a: np.concatenate(a), *results)
        out["robust_accuracy"] = float(np.mean(~res.success))
        out["clean_accuracy"] = float(np.mean(
                np.concatenate([np.argmax(apply(xb[i:i + batch]), -1)
                                for i in range(0, n, batch)]) == ys))
        out["gflop"] = _step_flops(logits_fn, xs[:batch]) * (n / batch) * cfg["steps"] / 1e9
        out["conv_lowering"] = mode if form == "auto" else f"{mode}/{form}"
        out.update(compile_s=max(first - steady, 0.0), seconds=steady)
    else:
        import torch
        dev = "cuda" if device == "gpu" else "cpu"
        net = _torch_cnn(model, variables, module, dev)
        xt = torch.tensor(_to_nchw(xs), device=dev)
        yt = torch.tensor(ys.astype(np.int64), device=dev)
        call = torch_cnn_attack(framework, net, attack, cfg, batch, dev, tuple(xt.shape[1:]))
        advs = []

        def go():
            advs.clear()
            for i in range(0, n, batch):
                advs.append(call(xt[i:i + batch], yt[i:i + batch]))
            if dev == "cuda":
                torch.cuda.synchronize()

        first, steady = _time_calls(go, repeats)
        with torch.no_grad():
            preds = torch.cat([net(a).argmax(1) for a in advs])
            clean = torch.cat([net(xt[i:i + batch]).argmax(1) for i in range(0, n, batch)])
        out["robust_accuracy"] = float((preds == yt).float().mean())
        out["clean_accuracy"] = float((clean == yt).float().mean())
        out.update(compile_s=max(first - steady, 0.0), seconds=steady)
    out["peak_memory_mb"] = _peak_memory_mb(device, framework)
    out["images_per_s"] = n / out["seconds"]
    return out


def measure_forms(repeats: int = 5) -> list[dict]:
    """Forward + input-gradient time of single conv layers: native vs the GEMM forms.

    The shapes are those of the LeNet5 / ResNet-44 layers at batch 256 / 128, plus a wide layer
    (256 channels) and a 1×1 layer; this is what :func:`advjax.lowering.choose_form` is based on.
    Times are per attack step (the input gradient of ``sum(conv(x, w)²)``, ``w`` a constant),
    inside a ``fori_loop`` of steps as in the attacks; ``native_outside_loop`` is the same step
    jitted alone. Columns: ``native`` (XLA's convolution and its transposes), ``concat`` /
    ``accumulate`` (the whole convolution rewritten in that GEMM form), ``tangent`` (XLA's
    convolution for the value, the GEMM form picked by ``choose_form`` for the derivative: the
    attacks' default on CPU) and
    ``tangent_concat`` / ``tangent_accumulate`` (the value native, the derivative forced to that
    form); ``rule`` is ``choose_form``'s pick for the layer.
    """
    import functools

    import jax
    import jax.numpy as jnp
    from jax import lax

    from advjax.lowering import choose_form, conv_gemm, lower_convs

    dn = ("NHWC", "HWIO", "NHWC")

    def tangent_in(form):
        """conv with the native value and a ``form`` GEMM derivative in ``x`` (weights fixed)."""
        @functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
        def conv(x, w, stride, pad):
            return lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=dn)

        @conv.defjvp
        def conv_jvp(stride, pad, primals, tangents):
            x, w = primals
            dx, _ = tangents
            dnums = lax.conv_dimension_numbers(x.shape, w.shape, dn)
            pads = lax.padtype_to_pads(x.shape[1:3], w.shape[:2], (stride, stride), pad) \
                if isinstance(pad, str) else pad
            t = conv_gemm(dx, w, window_strides=(stride, stride), padding=tuple(pads),
                          lhs_dilation=(1, 1), rhs_dilation=(1, 1), dimension_numbers=dnums,
                          feature_group_count=1, batch_group_count=1, precision=None,
                          preferred_element_type=None, form=form)
            return conv(x, w, stride, pad), t
        return conv

    shapes = [((256, 28, 28, 1), (3, 3, 1, 32), 1), ((256, 14, 14, 32), (3, 3, 32, 64), 1),
              ((128, 32, 32, 16), (3, 3, 16, 16), 1), ((128, 32, 32, 16), (3, 3, 16, 32), 2),
              ((128, 16, 16, 32), (3, 3, 32, 32), 1), ((128, 8, 8, 64), (3, 3, 64, 64), 1),
              ((32, 8, 8, 256), (3, 3, 256, 256), 1), ((128, 16, 16, 64), (1, 1, 64, 64), 1)]
    iterations = 3
    rows = []
    for xs, ws, stride in shapes:
        x = jax.random.normal(jax.random.key(0), xs)
        w = np.asarray(jax.random.normal(jax.random.key(1), ws) * 0.1)  # a constant, as in attacks

        pad = ((1, 1), (1, 1)) if ws[0] == 3 else ((0, 0), (0, 0))

        def conv(x, w, s=stride, pad=pad):
            return lax.conv_general_dilated(x, w, (s, s), pad, dimension_numbers=dn)
        out_sp = [(xs[1] + 2 * (ws[0] == 3) - ws[0]) // stride + 1] * 2
        row = {"x": xs, "w": ws, "stride": stride, "iterations": iterations,
               "rule": choose_form(ws[:2], out_sp, xs[0], ws[2], 1)}
        fns = [("native", conv),
               ("concat", lower_convs(conv, mode="gemm", form="concat")),
               ("accumulate", lower_convs(conv, mode="gemm", form="accumulate")),
               ("tangent", lower_convs(conv, mode="gemm", form="tangent"))]
        fns += [(f"tangent_{f}", lambda x, w, c=tangent_in(f), s=stride, p=pad: c(x, w, s, p))
                for f in ("concat", "accumulate")]
        # One attack step outside any loop (native only), then every form inside a fori_loop of
        # attack steps x <- x + 1e-3 sign(grad): where an attack runs them (XLA:CPU compiles a
        # convolution's input gradient inside a while loop very differently from outside one).
        once = jax.jit(jax.grad(lambda x, w=w, conv=conv: jnp.sum(conv(x, w) ** 2)))
        _, t = _time_calls(lambda f=once, x=x: jax.block_until_ready(f(x)), repeats)
        row["native_outside_loop_ms"] = t * 1e3
        ref = None
        for name, fn in fns:
            grad = jax.grad(lambda x, f=fn, w=w: jnp.sum(f(x, w) ** 2))
            loop = jax.jit(lambda x, g=grad: lax.fori_loop(
                    0, iterations, lambda i, v: v + 1e-3 * jnp.sign(g(v)), x))
            _, t = _time_calls(lambda f=loop, x=x: jax.block_until_ready(f(x)), repeats)
            g = jax.jit(grad)(x)
            ref = g if ref is None else ref
            row[name + "_ms"] = t * 1e3 / iterations
            row[name + "_grad_rel_err"] = float(jnp.max(jnp.abs(g - ref))
                                                / jnp.max(jnp.abs(ref)))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def measure_loop_penalty(model: str = "resnet44", n: int = 16, iterations: int = 5,
                         repeats: int = 3, synthetic: bool = False) -> dict:
    """One attack step (input gradient of the cross-entropy) of a whole network, ms per step:
    jitted alone vs inside a ``fori_loop`` of steps, XLA's convolutions vs ``form="tangent"``.

    XLA:CPU runs a convolution's input gradient far slower inside a while loop than outside one;
    an attack's steps are such a loop, which is where the tangent form gains.
    """
    import jax
    import jax.numpy as jnp
    from jax import lax

    from advjax.lowering import lower_convs

    _, _, apply = _cnn_jax(model, synthetic, 44)
    xs, ys = _cnn_data(model, n, synthetic)
    x, y = jnp.asarray(xs), jnp.asarray(ys)
    row = {"model": model, "n": n, "iterations": iterations}
    for name, mode in (("native", "native"), ("tangent", "gemm")):
        fn = lower_convs(apply, mode=mode, form="tangent")

        def grad(v, fn=fn):
            return jax.grad(lambda v: -jnp.sum(jax.nn.log_softmax(fn(v))[jnp.arange(n), y]))(v)
        once = jax.jit(grad)
        loop = jax.jit(lambda v, g=grad: lax.fori_loop(
                0, iterations, lambda i, u: u + 1e-3 * jnp.sign(g(u)), v))
        _, t = _time_calls(lambda f=once: jax.block_until_ready(f(x)), repeats)
        row[f"{name}_outside_loop_ms"] = t * 1e3
        _, t = _time_calls(lambda f=loop: jax.block_until_ready(f(x)), repeats)
        row[f"{name}_in_loop_ms"] = t * 1e3 / iterations
    print(json.dumps(row), flush=True)
    return row


# ----------------------------------------------------------------------------- measurements

def _time_calls(fn, repeats: int) -> tuple[float, float]:
    """(first-call seconds, median steady-state seconds) of ``fn()``."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def _step_flops(logits_fn, xs) -> float:
    """XLA's FLOP count of one batched forward + input-gradient backward pass."""
    import jax
    import jax.numpy as jnp

    def loss(x, y):
        return -jax.nn.log_softmax(logits_fn(x))[y]

    fn = jax.jit(jax.vmap(jax.value_and_grad(loss)))
    cost = fn.lower(jnp.asarray(xs), jnp.zeros(len(xs), jnp.int32)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def measure_matmul_roofline() -> float:
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.key(0), (4096, 4096), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    _, t = _time_calls(lambda: f(a).block_until_ready(), 5)
    return 2 * 4096 ** 3 / t / 1e9


def measure(framework: str, model_name: str, attack: str, n: int, batch: int, repeats: int,
            cache: Path) -> dict:
    xs, ys = _mnist(n)
    out: dict = {"framework": framework, "model": model_name, "attack": attack, "n": n}
    if framework == "advjax":
        import jax
        import jax.numpy as jnp

        from advjax import attacks
        if model_name.startswith("lenet5"):
            _, _, logits_fn = _lenet_jax("advtrained" if model_name == "lenet5adv"
                                         else "clntrained")
        else:
            _, _, logits_fn = _mlp_jax(cache)
        if attack == "pgd":
            atk = attacks.pgd(logits_fn, norm="linf", steps=PGD["steps"], step_size=PGD["step"],
                              random_start=False)
            run = jax.jit(jax.vmap(lambda x, y: atk(x, y, eps=PGD["eps"])))
        else:
            atk = attacks.lbfgs(logits_fn, **LBFGS)
            run = jax.jit(jax.vmap(lambda x, y: atk(x, y, target=(y + 1) % 10)))
        xb, yb = jnp.asarray(xs), jnp.asarray(ys)
        results = []

        def go():
            results.clear()
            for i in range(0, n, batch):
                r = run(xb[i:i + batch], yb[i:i + batch])
                results.append(r)
            jax.block_until_ready(results)

        first, steady = _time_calls(go, repeats)
        res = jax.tree.map(lambda *a: np.concatenate(a), *results)
        if attack == "pgd":
            out["robust_accuracy"] = float(np.mean(~res.success))
            step_flops = _step_flops(logits_fn, xs[:batch]) * (n / batch)
            # steps gradient steps + (steps + 1) scoring forwards (best-iterate tracking).
            out["gflop"] = step_flops * PGD["steps"] / 1e9
        else:
            out["success_rate"] = float(np.mean(res.success))
            out["mean_l2"] = float(np.mean(res.l2[res.success]))
        out.update(compile_s=first - steady, seconds=steady)
    else:
        import torch
        net = _torch_model(model_name, cache)
        xt, yt = torch.tensor(_to_nchw(xs)), torch.tensor(ys.astype(np.int64))
        if attack == "pgd":
            if framework == "torchattacks":
                import torchattacks
                atk = torchattacks.PGD(net, eps=PGD["eps"], alpha=PGD["step"],
                                       steps=PGD["steps"], random_start=False)
                call = lambda xb, yb: atk(xb, yb)
            elif framework == "foolbox":
                import foolbox as fb
                fmodel = fb.PyTorchModel(net, bounds=(0, 1))
                atk = fb.attacks.LinfPGD(abs_stepsize=PGD["step"], steps=PGD["steps"],
                                         random_start=False)
                call = lambda xb, yb: atk(fmodel, xb, yb, epsilons=PGD["eps"])[1]
            elif framework == "art":
                from art.attacks.evasion import ProjectedGradientDescent
                from art.estimators.classification import PyTorchClassifier
                clf = PyTorchClassifier(net, loss=torch.nn.CrossEntropyLoss(),
                                        input_shape=tuple(xt.shape[1:]), nb_classes=10,
                                        clip_values=(0.0, 1.0))
                atk = ProjectedGradientDescent(clf, norm=np.inf, eps=PGD["eps"],
                                               eps_step=PGD["step"], max_iter=PGD["steps"],
                                               num_random_init=0, batch_size=batch,
                                               verbose=False)
                call = lambda xb, yb: torch.tensor(atk.generate(xb.numpy(), y=yb.numpy()))
            else:
                raise ValueError(framework)
            advs = []

            def go():
                advs.clear()
                for i in range(0, n, batch):
                    advs.append(call(xt[i:i + batch], yt[i:i + batch]))

            first, steady = _time_calls(go, repeats)
            with torch.no_grad():
                preds = torch.cat([net(a).argmax(1) for a in advs])
            out["robust_accuracy"] = float((preds == yt).float().mean())
            out.update(compile_s=max(first - steady, 0.0), seconds=steady)
        else:
            out.update(_scipy_lbfgs(net, xs, ys, repeats))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["images_per_s"] = n / out["seconds"]
    return out


def _scipy_lbfgs(net, xs, ys, repeats) -> dict:
    """scipy L-BFGS-B per example on the PyTorch model, cleverhans-style c search."""
    import torch
    from scipy.optimize import fmin_l_bfgs_b

    def attack_one(x, y):
        target = (y + 1) % 10
        x0 = x.reshape(-1).astype(np.float64)
        shape = (1, *_to_nchw(x[None]).shape[1:])
        tgt = torch.tensor([target])

        def f(v, c):
            xv = torch.tensor(v.reshape(x.shape)[None].transpose(0, 3, 1, 2).copy(),
                              dtype=torch.float32, requires_grad=True)
            loss = c * torch.nn.functional.cross_entropy(net(xv.reshape(shape)), tgt,
                                                         reduction="sum")
            loss.backward()
            g = xv.grad.numpy().transpose(0, 2, 3, 1).reshape(-1).astype(np.float64)
            r = v - x0
            return float(loss) + float(r @ r), g + 2 * r

        lower, upper, c, best = 0.0, None, LBFGS["initial_const"], None
        for _ in range(LBFGS["search_steps"]):
            v, _, _ = fmin_l_bfgs_b(f, x0, args=(c,), bounds=[(0.0, 1.0)] * x0.size,
                                    maxiter=LBFGS["max_iterations"])
            with torch.no_grad():
                xv = torch.tensor(v.reshape(x.shape)[None].transpose(0, 3, 1, 2).copy(),
                                  dtype=torch.float32)
                ok = int(net(xv).argmax(1)) == target
            if ok:
                d = float(np.linalg.norm(v - x0))
                best = d if best is None else min(best, d)
                upper = c
                c = (lower + upper) / 2
            else:
                lower = c
                c = c * LBFGS["growth"] if upper is None else (lower + upper) / 2
        return best

    dists = []

    def go():
        dists.clear()
        dists.extend(attack_one(x, int(y)) for x, y in zip(xs, ys, strict=True))

    first, steady = _time_calls(go, max(repeats - 1, 0)) if repeats > 1 else (None, None)
    if steady is None:
        t0 = time.perf_counter()
        go()
        steady = time.perf_counter() - t0
    ok = [d for d in dists if d is not None]
    return {"success_rate": len(ok) / len(dists), "mean_l2": float(np.mean(ok)) if ok else None,
            "compile_s": 0.0, "seconds": steady}


# ----------------------------------------------------------------------------- driver

OLD_PLAN = [
    ("advjax", "mlp", "pgd"), ("torchattacks", "mlp", "pgd"), ("foolbox", "mlp", "pgd"),
    ("art", "mlp", "pgd"),
    ("advjax", "mlp", "lbfgs"), ("scipy", "mlp", "lbfgs"),
]
PEERS = ("torchattacks", "foolbox", "art")


def cnn_plan(models: list[str]) -> list[tuple[str, str, str]]:
    plan = []
    for model in models:
        attacks = ("pgd", "apgd") if model == "resnet44" else ("pgd",)
        for attack in attacks:
            fws = ["advjax", "advjax-native", "advjax-tangent"]
            if model != "flaxlenet":  # same network as lenet5adv for the peers
                fws += [p for p in PEERS if not (p == "foolbox" and attack == "apgd")]
            plan += [(fw, model, attack) for fw in fws]
    return plan


def _available(framework: str) -> bool:
    mod = {"torchattacks": "torchattacks", "foolbox": "foolbox", "art": "art",
           "scipy": "torch"}.get(framework)
    if mod is None:
        return True
    import importlib.util
    return importlib.util.find_spec(mod) is not None and \
        importlib.util.find_spec("torch") is not None


def _row_text(r: dict) -> str:
    strength = r.get("robust_accuracy", r.get("mean_l2"))
    mem = r.get("peak_memory_mb", r.get("peak_rss_mb", float("nan")))
    return (f"{r['framework']:14s}{r['model']:10s}{r['attack']:6s}{r['images_per_s']:10.1f}"
            f"{r['compile_s']:10.2f}{(strength if strength is not None else float('nan')):11.4f}"
            f"{mem:9.0f}{r.get('gflops_per_s', float('nan')):9.1f}"
            f"{r.get('roofline_fraction', float('nan')):6.2f}"
            f"{r.get('advjax_speedup', float('nan')):9.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=("cnn", "all"), default="cnn")
    parser.add_argument("--models", nargs="*", default=None,
                        help=f"subset of {CNN_MODELS} (default: all of them)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="cpu: JAX_PLATFORMS=cpu, torch on CPU; gpu: JAX and torch on CUDA")
    parser.add_argument("--quick", action="store_true",
                        help="lenet5adv, flaxlenet and resnet44 only, 2 repeats; with "
                             "--device gpu: n = batch = 1024 (under five minutes on one GPU)")
    parser.add_argument("--synthetic", action="store_true",
                        help="random weights and images (no ADVJAX_DATA_DIR needed)")
    parser.add_argument("--resnet-checkpoint", choices=RESNET_CHECKPOINTS, default="standard",
                        help="which Woods et al. (2019) ResNet-44 the resnet44 rows attack")
    parser.add_argument("--resnet-depth", type=int, default=44,
                        help="depth of the synthetic ResNet (the checkpoint is 44)")
    parser.add_argument("--steps", type=int, default=None, help="override every attack's steps")
    parser.add_argument("--n", type=int, default=None, help="images per measurement")
    parser.add_argument("--n-resnet", type=int, default=None,
                        help="images per ResNet-44 measurement (default: --n)")
    parser.add_argument("--n-lbfgs", type=int, default=64, help="images per L-BFGS measurement")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--only", nargs=3, metavar=("FRAMEWORK", "MODEL", "ATTACK"))
    parser.add_argument("--frameworks", nargs="*", default=None,
                        help="subset of advjax advjax-native torchattacks foolbox art scipy")
    parser.add_argument("--forms", action="store_true",
                        help="time single conv layers: native vs the GEMM forms, then exit")
    parser.add_argument("--cache", default="benchmarks/results/mlp_fc100.npz")
    parser.add_argument("--out", default=None,
                        help="results JSON (default benchmarks/results/attacks[_gpu].json)")
    args = parser.parse_args(argv)
    gpu_quick = args.quick and args.device == "gpu"
    n = args.n or (1024 if gpu_quick else 256)
    batch = args.batch or min(n, 1024 if gpu_quick else 256)
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 3)
    cache = Path(args.cache)
    out = Path(args.out or ("benchmarks/results/attacks_gpu.json" if args.device == "gpu"
                            else "benchmarks/results/attacks.json"))
    if args.forms:
        rows = measure_forms(repeats=3 if args.repeats is None else args.repeats)
        rows.append(measure_loop_penalty(synthetic=args.synthetic))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_name("conv_forms.json").write_text(json.dumps(rows, indent=2))
        return
    if args.only:
        fw, model, attack = args.only
        if model in CNN_MODELS:
            row = measure_cnn(fw, model, attack, n, batch, repeats, device=args.device,
                              synthetic=args.synthetic, depth=args.resnet_depth,
                              steps=args.steps, checkpoint=args.resnet_checkpoint)
        else:
            row = measure(fw, model, attack, n if attack == "pgd" else args.n_lbfgs, batch,
                          repeats, cache)
        print(json.dumps(row))
        return
    models = args.models or (["lenet5adv", "flaxlenet", "resnet44"] if args.quick
                             else list(CNN_MODELS))
    plan = cnn_plan(models)
    if args.suite == "all":
        _mlp_jax(cache)  # train once, shared by every subprocess
        plan += OLD_PLAN
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false",
               JAX_PLATFORMS="cuda" if args.device == "gpu" else "cpu")
    rows, skipped = [], []
    for fw, model, attack in plan:
        if (args.frameworks and fw not in args.frameworks) or not _available(fw):
            if not _available(fw):
                skipped.append(f"{fw}/{model}/{attack}: not installed")
            continue
        n_row = (args.n_resnet or n) if model == "resnet44" else n
        cmd = [sys.executable, __file__, "--only", fw, model, attack, "--n", str(n_row),
               "--n-lbfgs", str(args.n_lbfgs), "--batch", str(min(batch, n_row)),
               "--repeats", str(repeats),
               "--cache", str(cache), "--device", args.device,
               "--resnet-depth", str(args.resnet_depth),
               "--resnet-checkpoint", args.resnet_checkpoint]
        cmd += ["--synthetic"] if args.synthetic else []
        cmd += ["--steps", str(args.steps)] if args.steps is not None else []
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"{fw}/{model}/{attack} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            skipped.append(f"{fw}/{model}/{attack}: failed ({proc.stderr.strip()[-200:]})")
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    os.environ.update(JAX_PLATFORMS=env["JAX_PLATFORMS"], XLA_PYTHON_CLIENT_PREALLOCATE="false")
    import jax
    peak = measure_matmul_roofline()
    for row in rows:
        if "gflop" in row:
            row["gflops_per_s"] = row["gflop"] / row["seconds"]
            row["roofline_fraction"] = row["gflops_per_s"] / peak
        ref = next((r for r in rows if r["framework"] == "advjax" and r["model"] == row["model"]
                    and r["attack"] == row["attack"]), None)
        if ref is not None:
            row["advjax_speedup"] = row["seconds"] / ref["seconds"] * ref["n"] / row["n"]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": platform.platform(), "cpus": os.cpu_count(),
              "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
              "python": platform.python_version(), "jax": jax.__version__,
              "load_average_after": load, "matmul_fp32_gflops": peak,
              "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "synthetic": args.synthetic, "settings": {
                  "pgd_mnist": PGD, "pgd_cifar": PGD_CIFAR, "apgd_cifar": APGD_CIFAR,
                  "lbfgs": LBFGS, "n": n, "n_resnet": args.n_resnet or n, "batch": batch,
                  "repeats": repeats,
                  "steps_override": args.steps, "resnet_depth": args.resnet_depth,
                  "resnet_checkpoint": args.resnet_checkpoint},
              "rows": rows, "skipped": skipped}
    try:
        import torch
        record["torch"] = torch.__version__
    except ImportError:
        pass
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, out)
    print(f"{'framework':14s}{'model':10s}{'attack':6s}{'img/s':>10s}{'compile s':>10s}"
          f"{'rob.acc/L2':>11s}{'peak MB':>9s}{'GFLOP/s':>9s}{'roof':>6s}{'advjax x':>9s}")
    for r in rows:
        print(_row_text(r))
    print(f"fp32 matmul roofline here: {peak:.1f} GFLOP/s; load average {load}; wrote {out}")


if __name__ == "__main__":
    main()
