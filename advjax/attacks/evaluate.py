"""Robustness evaluation of a data set with the AutoAttack ensemble: stage by stage, each stage
only on the examples still robust, sharded over every device, resumable from a state file.

Per-example keys are ``fold_in(fold_in(key, index), stage)`` (the same as
:func:`advjax.attacks.autoattack` called with ``fold_in(key, index)``), so the per-example results
do not depend on the batch size, the device count, or on resuming.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advjax import _checks, parallel
from advjax.attacks import _boundary
from advjax.attacks.autoattack import (
    VERSION_STAGES,
    settings_for,
    stage_search,
    verified_success,
)

Array = jax.Array
_STATE_VERSION = 2


@dataclasses.dataclass
class Evaluation:
    """Outcome of :func:`evaluate` on N examples.

    Attributes:
      stages: stage names in order.
      clean_accuracy: fraction of examples classified correctly.
      robust_accuracy: ``{stage: fraction still robust after that stage}`` (cumulative).
      robust: ``(N,)`` bool, robust after every stage (False for misclassified / invalid ones).
      clean_correct: ``(N,)`` bool.
      broken_by: ``(N,)`` int, index of the stage that broke the example (-1: none).
      stage_success: ``(N, n_stages)`` bool, ``broken_by == i``.
      x_adv: ``(N, ...)`` the successful points (``x`` where none).
      seconds: ``{stage: run time s}`` (compilation excluded); ``compile_seconds`` likewise.
      attacked: ``{stage: number of examples the stage ran on}``.
      eps: ``(N,)`` the budgets.
    """

    stages: tuple[str, ...]
    clean_accuracy: float
    robust_accuracy: dict[str, float]
    robust: np.ndarray
    clean_correct: np.ndarray
    broken_by: np.ndarray
    stage_success: np.ndarray
    x_adv: np.ndarray
    seconds: dict[str, float]
    compile_seconds: dict[str, float]
    attacked: dict[str, int]
    eps: np.ndarray

    def table(self) -> str:
        """A Markdown table: robust accuracy, examples attacked and time after each stage."""
        rows = ["| stage | robust accuracy | examples attacked | run s | compile s |",
                "|---|---|---|---|---|",
                f"| clean | {self.clean_accuracy:.2%} | — | — | — |"]
        for s in self.stages:
            if s in self.robust_accuracy:
                rows.append(f"| {s} | {self.robust_accuracy[s]:.2%} | {self.attacked[s]} | "
                            f"{self.seconds[s]:.1f} | {self.compile_seconds[s]:.1f} |")
        return "\n".join(rows)


def chunk_rows(left: int, batch_size: int, n_dev: int) -> int:
    """Rows of the next compiled call for ``left`` rows still to attack: ``batch_size``, or for a
    last chunk ``left`` rounded up to a multiple of 1/16 of its next power of two (fewer than
    ``left / 8`` padded rows: 182 rows run as 192, not 256) and of the device count.

    A padded row is inactive but still computed (under ``vmap`` every lane runs while any is
    active), so coarse buckets cost time in proportion; each distinct size compiles once per
    stage.
    """
    grain = max(1, (1 << max(left - 1, 0).bit_length()) // 16)
    size = -(-left // grain) * grain
    return min(batch_size, -(-size // n_dev) * n_dev)


class AutoAttackEvaluator:
    """Holds the compiled stages so that repeated evaluations do not recompile.

    Args:
      logits_fn: per-example ``x -> logits (K,)`` (randomised ``(x, key)`` for ``"rand"``).
      norm, version, attacks, lo, hi, **settings: as :func:`advjax.attacks.autoattack`.
      batch_size: rows per compiled call (rounded up to a multiple of the device count); the
        last chunk of a stage shrinks to the rows left, rounded up (:func:`chunk_rows`).
      mesh: a 1-D ``"batch"`` mesh (default: every device).
    """

    def __init__(self, logits_fn: Callable, *, norm: str = "linf", version: str = "standard",
                 attacks: Sequence[str] | None = None, batch_size: int = 256, mesh=None,
                 lo: float | None = 0.0, hi: float | None = 1.0, **settings: Any) -> None:
        _checks.check_positive_int(batch_size, "batch_size")
        lo, hi = _boundary.check_box_setting(lo, hi)
        self.cfg = settings_for(version, norm, lo=lo, hi=hi, **settings)
        self.stages = tuple(VERSION_STAGES[version] if attacks is None else attacks)
        self.version = version
        self.logits_fn = logits_fn = _boundary._prepare_logits_fn(logits_fn)
        self.mesh = parallel.make_mesh() if mesh is None else mesh
        self.n_dev = self.mesh.shape[parallel.BATCH_AXIS]
        self.batch_size = -(-batch_size // self.n_dev) * self.n_dev
        self.sharding = parallel.batch_sharding(self.mesh)
        self._compiled: dict[tuple[str, int], Any] = {}
        self._fns = {s: self._stage_fn(s) for s in self.stages}
        cfg = self.cfg
        det = (lambda z: logits_fn(z, jax.random.key(0))) if cfg.randomized else logits_fn
        self._det = det
        self._predict = jax.jit(jax.vmap(lambda x: jnp.argmax(det(x))),
                                out_shardings=self.sharding)

    def _stage_fn(self, name: str):
        search = stage_search(name, self.logits_fn, self.cfg)
        cfg, logits_fn = self.cfg, self.logits_fn
        index = self.stages.index(name)

        def run(x, label, eps, key, active):
            k_i = jax.random.fold_in(key, index)
            z = search(x, label, eps, k_i, active)
            s = active & verified_success(logits_fn, cfg, x, z, label, eps,
                                          jax.random.fold_in(k_i, 7))
            return jnp.where(s, z, x), s

        return jax.vmap(run)

    def _run_chunked(self, name: str, args: tuple, progress: bool):
        """Runs stage ``name`` on the rows of ``args`` (host arrays), returns host outputs and
        (run seconds, compile seconds)."""
        n = int(args[0].shape[0])
        outs, run_s, compile_s = [], 0.0, 0.0
        start = 0
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=n, desc=name, unit="ex")
        while start < n:
            left = n - start
            size = chunk_rows(left, self.batch_size, self.n_dev)
            stop = min(start + size, n)
            rows = [a[start:stop] for a in args]
            pad = size - (stop - start)
            if pad:
                rows = [np.concatenate([r, np.repeat(r[-1:], pad, axis=0)]) for r in rows]
                rows[-1][stop - start:] = False              # padded rows are inactive
            rows[3] = jax.random.wrap_key_data(jnp.asarray(rows[3]))
            rows = jax.device_put(tuple(rows), self.sharding)
            key = (name, size)
            if key not in self._compiled:
                t0 = time.perf_counter()
                self._compiled[key] = jax.jit(self._fns[name], out_shardings=self.sharding) \
                    .lower(*rows).compile()
                compile_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            z, s = self._compiled[key](*rows)
            z, s = np.asarray(z)[: stop - start], np.asarray(s)[: stop - start]
            run_s += time.perf_counter() - t0
            outs.append((z, s))
            if bar is not None:
                bar.update(stop - start)
            start = stop
        if bar is not None:
            bar.close()
        if not outs:
            return None, None, run_s, compile_s
        return (np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs]),
                run_s, compile_s)

    def __call__(self, xs, labels, *, eps, key: Array, state_path: str | os.PathLike | None = None,
                 progress: bool = False) -> Evaluation:
        """Evaluates ``xs`` ``(N, ...)`` with labels ``(N,)`` at ``eps`` (scalar or ``(N,)``).

        With ``state_path`` the state (flags, adversarial points, times) is written after the
        clean pass and after every stage, and an existing state is resumed from the first stage
        not yet run. A state belongs to the evaluation that made it: one made with other stages
        or settings, other images, labels, budgets or key raises a ``ValueError`` naming what
        differs, and so does one whose stored clean predictions differ from this model's (the
        model is checked by one clean forward pass over ``xs`` on resume).
        """
        xs = np.asarray(xs)
        labels = np.asarray(labels)
        _checks.check_floating(xs, "xs")
        if xs.ndim < 2:
            raise ValueError(f"`xs` must be a batch (N, ...); got shape {xs.shape}.")
        n = xs.shape[0]
        _checks.check_shape(labels, "labels", (n,))
        if self.cfg.lo is not None:
            _checks.check_in_range(xs, "xs", self.cfg.lo, self.cfg.hi)
        else:
            _checks.check_finite(xs, "xs")
        k = _boundary.num_classes(self._det, jnp.asarray(xs[0]))
        _checks.check_labels(labels, "labels", k)
        eps = np.broadcast_to(np.asarray(eps, xs.dtype), (n,)).copy()
        _checks.check_nonnegative(eps, "eps")
        key = _boundary.check_key(key)
        keys = np.asarray(jax.random.key_data(
            jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))))
        labels = labels.astype(np.int32)

        fingerprint = self._fingerprint(xs, labels, eps, keys)
        state = self._load(state_path, fingerprint)
        pred = self._predict_all(xs)
        if state is None:
            state = dict(clean_pred=pred.astype(np.int64), clean_correct=pred == labels,
                         broken_by=np.full(n, -1, np.int64), x_adv=xs.copy(), done=[],
                         robust_accuracy={}, seconds={}, compile_seconds={}, attacked={})
            self._save(state_path, state, fingerprint)
        elif not np.array_equal(state["clean_pred"], pred):
            raise ValueError(
                f"`state_path` {state_path} was made with another model: its clean predictions "
                f"differ from this `logits_fn`'s on {int(np.sum(state['clean_pred'] != pred))} "
                f"of {n} images.")
        robust = state["clean_correct"] & (state["broken_by"] < 0)
        for i, name in enumerate(self.stages):
            if name in state["done"]:
                continue
            idx = np.flatnonzero(robust)
            args = (xs[idx], labels[idx], eps[idx], keys[idx], np.ones(len(idx), bool))
            z, s, run_s, comp_s = self._run_chunked(name, args, progress)
            if z is not None:
                hit = idx[s]
                state["x_adv"][hit] = z[s]
                state["broken_by"][hit] = i
                robust[hit] = False
            state["done"].append(name)
            state["robust_accuracy"][name] = float(robust.mean())
            state["seconds"][name] = run_s
            state["compile_seconds"][name] = comp_s
            state["attacked"][name] = int(len(idx))
            self._save(state_path, state, fingerprint)
        stage_success = state["broken_by"][:, None] == np.arange(len(self.stages))[None]
        return Evaluation(
            stages=self.stages, clean_accuracy=float(state["clean_correct"].mean()),
            robust_accuracy=dict(state["robust_accuracy"]), robust=robust,
            clean_correct=state["clean_correct"], broken_by=state["broken_by"],
            stage_success=stage_success, x_adv=state["x_adv"], seconds=dict(state["seconds"]),
            compile_seconds=dict(state["compile_seconds"]), attacked=dict(state["attacked"]),
            eps=eps)

    def _predict_all(self, xs: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, xs.shape[0], self.batch_size):
            rows = xs[start:start + self.batch_size]
            m = rows.shape[0]
            if m < self.batch_size:
                rows = np.concatenate([rows, np.repeat(rows[-1:], self.batch_size - m, 0)])
            out.append(np.asarray(self._predict(jax.device_put(rows, self.sharding)))[:m])
        return np.concatenate(out)

    # ------------------------------------------------------------------------- state file
    def _fingerprint(self, xs, labels, eps, keys) -> dict:
        """What a state file must match to be resumed: the evaluation's stages and settings and
        SHA-256 digests of the exact images, labels, budgets and per-example keys."""
        def digest(a: np.ndarray) -> str:
            a = np.ascontiguousarray(a)
            return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()

        settings = {f.name: repr(getattr(self.cfg, f.name))
                    for f in dataclasses.fields(self.cfg)}
        return dict(format=_STATE_VERSION, stages=list(self.stages), n=int(xs.shape[0]),
                    version=self.version, settings=settings, images=digest(xs),
                    labels=digest(labels), eps=digest(eps), keys=digest(keys))

    def _save(self, path, state, fingerprint) -> None:
        if path is None:
            return
        path = Path(path)
        meta = dict(fingerprint)
        meta.update(done=state["done"], robust_accuracy=state["robust_accuracy"],
                    seconds=state["seconds"], compile_seconds=state["compile_seconds"],
                    attacked=state["attacked"])
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, clean_pred=state["clean_pred"], clean_correct=state["clean_correct"],
                 broken_by=state["broken_by"],
                 x_adv=state["x_adv"], meta=np.asarray(json.dumps(meta)))
        os.replace(tmp, path)

    def _load(self, path, fingerprint):
        if path is None or not Path(path).exists():
            return None
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            for field in fingerprint:
                if meta.get(field) != fingerprint[field]:
                    what = {"images": "other images `xs`", "labels": "other `labels`",
                            "eps": "other budgets `eps`", "keys": "another `key`"}.get(field)
                    detail = (what if what else f"{field}: {meta.get(field)!r}, here "
                              f"{fingerprint[field]!r}")
                    raise ValueError(f"`state_path` {path} was made for another evaluation "
                                     f"({detail}).")
            return dict(clean_pred=f["clean_pred"].copy(),
                        clean_correct=f["clean_correct"].copy(), broken_by=f["broken_by"].copy(),
                        x_adv=f["x_adv"].copy(), done=list(meta["done"]),
                        robust_accuracy=dict(meta["robust_accuracy"]),
                        seconds=dict(meta["seconds"]),
                        compile_seconds=dict(meta["compile_seconds"]),
                        attacked=dict(meta["attacked"]))


def evaluate(logits_fn: Callable, xs, labels, *, eps, key: Array, norm: str = "linf",
             version: str = "standard", attacks: Sequence[str] | None = None,
             batch_size: int = 256, mesh=None, state_path: str | os.PathLike | None = None,
             progress: bool = False, lo: float | None = 0.0, hi: float | None = 1.0,
             **settings: Any) -> Evaluation:
    """AutoAttack evaluation of a data set (see :class:`AutoAttackEvaluator`).

    Args:
      logits_fn: per-example ``x -> logits (K,)``.
      xs: ``(N, ...)`` examples in ``[lo, hi]``; labels: ``(N,)`` int.
      eps: budget, scalar or ``(N,)`` (input units of ``norm``).
      key: base key; example ``j`` uses ``fold_in(key, j)``.
      norm, version, attacks, lo, hi, **settings: as :func:`advjax.attacks.autoattack`.
      batch_size, mesh: rows per compiled call; devices (default all).
      state_path: resumable state file (``.npz``), written atomically after every stage; it
        resumes only the evaluation that made it (see ``AutoAttackEvaluator.__call__``).
      progress: a tqdm bar per stage.

    Returns:
      :class:`Evaluation` (clean accuracy, robust accuracy after each stage, per-example flags,
      adversarial points, run and compile seconds per stage).
    """
    ev = AutoAttackEvaluator(logits_fn, norm=norm, version=version, attacks=attacks,
                             batch_size=batch_size, mesh=mesh, lo=lo, hi=hi, **settings)
    return ev(xs, labels, eps=eps, key=key, state_path=state_path, progress=progress)
