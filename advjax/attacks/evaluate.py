"""Robustness evaluation of a data set with the AutoAttack ensemble: stage by stage, each stage
only on the examples still robust, sharded over every device of every process, resumable from a
state file, with the gradient-masking checks of :mod:`advjax.attacks.diagnostics`.

Per-example keys are ``fold_in(fold_in(key, index), stage)`` (the same as
:func:`advjax.attacks.autoattack` called with ``fold_in(key, index)``), so the per-example results
do not depend on the batch size, the device or process count, or on resuming. Under
``jax.distributed`` every process holds the robust flags of the whole set (the compaction between
stages is global) and process 0 writes the state file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advjax import _checks, io, parallel
from advjax.attacks import _boundary, diagnostics, passes
from advjax.attacks.autoattack import (
    CONDITIONAL_STAGES,
    autoattack,
    check_stage_classes,
    settings_for,
    stage_search,
    verification_passes,
    verified_success,
    version_stages,
)

Array = jax.Array
logger = logging.getLogger(__name__)
_STATE_VERSION = 4
# Rows whose clean logits identify the model (computed on one device with one fixed shape, so the
# digest is the same bits whatever the device and process count) and run the masking checks.
PROBE_ROWS = 64
# With a progress report, a stage of up to this many full calls is split into about this many
# calls of one size (one compilation), so the report moves during the stage.
PROGRESS_CHUNKS = 8


@dataclasses.dataclass
class Evaluation:
    """Outcome of :func:`evaluate` on N examples.

    Per-example fields hold the rows the process asked for: all N with
    ``data_layout="global"``, its own ``n_p`` with ``data_layout="local"``
    (:func:`advjax.parallel.gather` collects all of them); the accuracies are over the whole set.

    Attributes:
      stages: stage names in order.
      clean_accuracy: fraction of examples classified correctly (finite logits only).
      robust_accuracy: ``{stage: fraction still robust after that stage}`` (cumulative).
      robust: ``(n,)`` bool, robust after every stage (False for misclassified / invalid ones).
      clean_correct: ``(n,)`` bool.
      broken_by: ``(n,)`` int, index of the stage that broke the example (-1: none).
      stage_success: ``(n, n_stages)`` bool, ``broken_by == i``.
      x_adv: ``(n, ...)`` the successful points (``x`` where none).
      seconds: ``{stage: run time s}`` (compilation excluded); ``compile_seconds`` likewise.
      attacked: ``{stage: number of examples the stage ran on}``.
      eps: ``(n,)`` the budgets.
      invalid: ``(n,)`` bool: the model's logits were not finite at the clean point or at a
        stage's point. Such an example is neither robust nor broken (an argmax of NaN is 0, not a
        prediction); ``num_invalid`` counts them over the whole set.
      checks: the gradient-masking checks (:class:`advjax.attacks.diagnostics.Check`); tripped
        ones were also warned about.
      skipped: ``{stage: reason}`` for a conditional stage the checks did not call for
        (``version="adaptive"``'s "square-restarts"); its robust accuracy is the previous one
        and it attacked 0 examples.
      autoattack_stages: the stages of AutoAttack's standard version among ``stages`` (all of
        them for the published versions); the later ones are the adaptive stages.
      passes: ``(n, n_stages, 2)`` int, the ``[forward, backward]`` model passes each stage spent
        on each example (:mod:`advjax.attacks.passes`: the search and its verification; zero
        where the stage did not attack the example). Independent of the batch size, padding,
        devices and hardware: the cost of each number, comparable across runs.
      forward_passes, backward_passes: ``{stage: total}`` over the examples the stage attacked
        (the whole set, every process).
      forward_per_example, backward_per_example: ``{stage: total / attacked[stage]}``, the mean
        per attacked example (0.0 when the stage attacked none).
    The clean pass costs one forward pass per example; the gradient-masking checks' few passes
    on the first :data:`PROBE_ROWS` rows are not counted.
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
    invalid: np.ndarray
    num_invalid: int
    checks: list
    passes: np.ndarray
    forward_passes: dict[str, int]
    backward_passes: dict[str, int]
    forward_per_example: dict[str, float]
    backward_per_example: dict[str, float]
    num_examples: int = 0
    skipped: dict = dataclasses.field(default_factory=dict)
    autoattack_stages: tuple[str, ...] = ()

    def broken_beyond_autoattack(self) -> dict[str, int]:
        """``{stage: examples it broke}`` for the stages after AutoAttack's (the adaptive
        stages), over this process's rows: each stage attacks only the examples every earlier
        stage left robust, so these are the examples AutoAttack alone reports robust."""
        return {s: int(np.sum(self.broken_by == i)) for i, s in enumerate(self.stages)
                if s not in self.autoattack_stages}

    def table(self) -> str:
        """A Markdown table: robust accuracy, examples attacked, time and model passes per
        attacked example after each stage (:mod:`advjax.attacks.passes`), a total row (run and
        compile seconds summed; passes per example of the whole set, the clean pass's one
        forward included), what the adaptive stages broke beyond AutoAttack, then the invalid
        examples and the masking checks."""
        rows = ["| stage | robust accuracy | examples attacked | run s | compile s | "
                "forward / example | backward / example |",
                "|---|---|---|---|---|---|---|",
                f"| clean | {self.clean_accuracy:.2%} | {self.num_examples} | — | — | 1 | 0 |"]
        ran = [s for s in self.stages if s in self.robust_accuracy]
        for s in ran:
            if s in self.skipped:
                rows.append(f"| {s} | {self.robust_accuracy[s]:.2%} | skipped: "
                            f"{self.skipped[s]} | — | — | 0 | 0 |")
                continue
            rows.append(f"| {s} | {self.robust_accuracy[s]:.2%} | {self.attacked[s]} | "
                        f"{self.seconds[s]:.1f} | {self.compile_seconds[s]:.1f} | "
                        f"{self.forward_per_example[s]:.1f} | "
                        f"{self.backward_per_example[s]:.1f} |")
        n = max(self.num_examples, 1)
        fwd = (self.num_examples + sum(self.forward_passes[s] for s in ran)) / n
        bwd = sum(self.backward_passes[s] for s in ran) / n
        final = f"{self.robust_accuracy[ran[-1]]:.2%}" if ran else "—"
        rows.append(f"| total | {final} | {self.num_examples} | "
                    f"{sum(self.seconds[s] for s in ran):.1f} | "
                    f"{sum(self.compile_seconds[s] for s in ran):.1f} | {fwd:.1f} | {bwd:.1f} |")
        done = [s for s in ran if s not in self.autoattack_stages]
        if done:
            last_aa = [s for s in self.autoattack_stages if s in self.robust_accuracy][-1]
            beyond = self.broken_beyond_autoattack()
            parts = ", ".join(f"{s} {beyond[s]}" for s in done if s not in self.skipped)
            rows += ["", f"Beyond AutoAttack ({self.robust_accuracy[last_aa]:.2%} robust after "
                     f"{last_aa}): the adaptive stages broke "
                     f"{sum(beyond[s] for s in done)} of {len(self.broken_by)} examples "
                     f"({parts or 'none run'}); robust accuracy "
                     f"{self.robust_accuracy[done[-1]]:.2%}."]
        rows.append("")
        rows.append(f"Invalid examples (non-finite logits; neither robust nor broken): "
                    f"{self.num_invalid}.")
        if self.checks:
            rows += ["", diagnostics.report(self.checks)]
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


def _digest(a: np.ndarray) -> str:
    return io.array_digest(a)


class AutoAttackEvaluator:
    """Holds the compiled stages so that repeated evaluations do not recompile.

    Args:
      logits_fn: per-example ``x -> logits (K,)`` (randomised ``(x, key)`` for ``"rand"``).
      norm, version, attacks, lo, hi, **settings: as :func:`advjax.attacks.autoattack`, and
        validated by it (the same errors).
      batch_size: rows per compiled call over all processes (rounded up to a multiple of the
        device count); the last chunk of a stage shrinks to the rows left, rounded up
        (:func:`chunk_rows`).
      mesh: a 1-D ``"batch"`` mesh (default: every device of every process).
    """

    def __init__(self, logits_fn: Callable, *, norm: str = "linf", version: str = "standard",
                 attacks: Sequence[str] | None = None, batch_size: int = 256, mesh=None,
                 lo: float | None = 0.0, hi: float | None = 1.0,
                 surrogate: Callable | None = None, **settings: Any) -> None:
        _checks.check_positive_int(batch_size, "batch_size")
        # The ensemble's own constructor validates the version, norm, box, stages, surrogate
        # and settings.
        ensemble = autoattack(logits_fn, norm=norm, version=version, attacks=attacks, lo=lo,
                              hi=hi, surrogate=surrogate, **settings)
        lo, hi = _boundary.check_box_setting(lo, hi)
        self.cfg = settings_for(version, norm, lo=lo, hi=hi, **settings)
        self.stages = tuple(ensemble.stages)
        standard = set(version_stages("standard", norm))
        self.autoattack_stages = (self.stages if version != "adaptive" else
                                  tuple(s for s in self.stages if s in standard))
        self.version = version
        self.surrogate = (None if surrogate is None
                          else _boundary._prepare_logits_fn(surrogate))
        self.logits_fn = logits_fn = _boundary._prepare_logits_fn(logits_fn)
        self.mesh = parallel.make_mesh() if mesh is None else mesh
        self.n_dev = self.mesh.shape[parallel.BATCH_AXIS]
        self.batch_size = -(-batch_size // self.n_dev) * self.n_dev
        self._compiled: dict[str, dict] = {s: {} for s in self.stages + ("clean",)}
        self._fns = {s: self._stage_fn(s) for s in self.stages}
        cfg = self.cfg
        det = (lambda z: logits_fn(z, jax.random.key(0))) if cfg.randomized else logits_fn
        self._det = det

    def _model(self, z, key):
        return self.logits_fn(z, key) if self.cfg.randomized else self.logits_fn(z)

    def _stage_fn(self, name: str):
        """Per example: ``(x_adv, success, nonfinite, passes)``; a point where the model's logits
        are not finite never counts as a success (it is flagged instead). ``passes``: the
        search's, the verification's (:func:`verification_passes`) and, for a randomised model,
        the draw that checks the logits are finite (for a deterministic model that is the
        verification's own forward pass: the same function of the same point)."""
        search = stage_search(name, self.logits_fn, self.cfg, self.surrogate)
        cfg, logits_fn = self.cfg, self.logits_fn
        index = self.stages.index(name)

        check = verification_passes(cfg) + passes.count(forward=int(cfg.randomized))

        def run(x, label, eps, key, active):
            k_i = jax.random.fold_in(key, index)
            z, spent = search(x, label, eps, k_i, active)
            k_check = jax.random.fold_in(k_i, 7)
            finite = jnp.all(jnp.isfinite(self._model(z, k_check)))
            s = active & finite & verified_success(logits_fn, cfg, x, z, label, eps, k_check)
            return (jnp.where(s, z, x), s, active & ~finite,
                    spent + passes.gated(active, check))

        return run

    def _rows_per_call(self, chunks: int = 1):
        """``rows(left, local_devices)`` for :func:`advjax.parallel.run_chunked`. ``chunks > 1``
        (a progress report): a stage of at most ``chunks`` full calls runs as about ``chunks``
        calls of ONE size, ``chunk_rows(total / chunks)`` (the last one padded up to it), so
        the report moves during the stage at no extra compilation; larger stages run as
        without it."""
        per_process = -(-self.batch_size // jax.process_count())
        first: dict = {}

        def rows(left, local_dev):
            total = first.setdefault("rows", left)     # the first call sees every row left
            if chunks > 1 and total <= chunks * per_process:
                return chunk_rows(-(-total // chunks), per_process, local_dev)
            return chunk_rows(left, per_process, local_dev)

        return rows

    def _run_chunked(self, name: str, args: tuple, progress):
        """Runs stage ``name`` on the rows of ``args`` (the same host arrays on every process);
        returns host outputs (every row) and (run seconds, compile seconds)."""
        if len(args[0]) == 0:
            return None, None, None, None, 0.0, 0.0
        t: dict = {}
        chunks = PROGRESS_CHUNKS if progress else 1
        z, s, bad, spent = parallel.run_chunked(
            self._fns[name], args, data_layout="global",
            rows_per_call=self._rows_per_call(chunks), mesh=self.mesh, progress=progress,
            desc=name, cache=self._compiled[name], timings=t)
        return z, s, bad, spent, t["run_s"], t["compile_s"]

    def __call__(self, xs, labels, *, eps, key: Array, state_path: str | os.PathLike | None = None,
                 progress: bool | Callable = False,
                 data_layout: str = "global") -> Evaluation:
        """Evaluates ``xs`` with ``labels`` at ``eps``.

        Args:
          xs: ``(n, ...)`` examples in ``[lo, hi]`` (``(n, H, W, C)`` images when a stage is
            ``'square'``); labels ``(n,)`` int; eps: scalar or ``(n,)``. ``n`` = N (the whole set,
            the same on every process) with ``data_layout="global"``, this process's rows with
            ``data_layout="local"`` (example ``i`` of process ``p`` has global index
            ``n_0 + ... + n_{p-1} + i``).
          key: base key (typed, any PRNG implementation, or raw ``uint32[2]``); the example of
            global index ``j`` uses ``fold_in(key, j)``.
          state_path: a state file (``.npz``), written atomically by process 0 after the clean
            pass and after every stage, read by every process. An existing state is resumed
            from the first stage not yet run (one line is logged saying what was reused). A
            state belongs to the evaluation that made it: one made with other stages or
            settings, other images, labels, budgets or key, or another model (a SHA-256 digest
            of its clean logits) raises a ``ValueError`` naming what differs.
          progress: True: a tqdm bar per stage (examples done, rate, time left); a callable:
            called with an :class:`advjax.parallel.ProgressUpdate` (``desc`` the stage) at the
            start of each stage and after each of its calls. Either way a stage runs in about
            :data:`PROGRESS_CHUNKS` calls of one compiled size (up to that many full calls),
            so the report moves within the stage; the results are the same.
          data_layout: ``"global"`` or ``"local"``.

        Returns:
          :class:`Evaluation` (per-example fields: the rows this process passed).
        """
        parallel.check_data_layout(data_layout)
        offset, n_mine = 0, None
        if data_layout == "local" and jax.process_count() > 1:
            xs_l = np.asarray(xs)
            eps_l = np.asarray(eps)
            counts = parallel._agree(len(xs_l), (xs_l,), "evaluate")
            offset, n_mine = int(counts[:jax.process_index()].sum()), len(xs_l)
            xs, labels = parallel.gather((xs_l, np.asarray(labels)))
            if parallel._allgather_ints([eps_l.ndim]).max() > 0:
                eps = parallel.gather(np.broadcast_to(eps_l, (n_mine,)))
        xs = np.asarray(xs)
        labels = np.asarray(labels)
        _checks.check_floating(xs, "xs")
        if xs.ndim < 2:
            raise ValueError(f"`xs` must be a batch (N, ...); got shape {xs.shape}.")
        if "square" in self.stages and xs.ndim != 4:
            raise ValueError(f"`xs` has shape {xs.shape}: the 'square' stage needs images "
                             "(N, H, W, C); for flat inputs pass `attacks` without 'square'.")
        n = xs.shape[0]
        _checks.check_shape(labels, "labels", (n,))
        if self.cfg.lo is not None:
            _checks.check_in_range(xs, "xs", self.cfg.lo, self.cfg.hi)
        else:
            _checks.check_finite(xs, "xs")
        k = _boundary.num_classes(self._det, jnp.asarray(xs[0]))
        _checks.check_labels(labels, "labels", k)
        check_stage_classes(self.stages, k)
        eps = np.broadcast_to(np.asarray(eps, xs.dtype), (n,)).copy()
        _checks.check_nonnegative(eps, "eps")
        key = _boundary.check_key(key)
        if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))
        keys = parallel.example_keys(key, n)
        labels = labels.astype(np.int32)

        probe = xs[:PROBE_ROWS]
        with jax.default_device(jax.local_devices()[0]):
            probe_logits = np.asarray(jax.jit(jax.vmap(self._det))(jnp.asarray(probe)))
            surrogate_logits = (None if self.surrogate is None else
                                np.asarray(jax.jit(jax.vmap(self.surrogate))(jnp.asarray(probe))))
        if surrogate_logits is not None and surrogate_logits.shape[-1] != probe_logits.shape[-1]:
            raise ValueError(f"`surrogate` gives {surrogate_logits.shape[-1]} classes, "
                             f"`logits_fn` {probe_logits.shape[-1]}: a transfer attack needs "
                             "the same classes.")
        fingerprint = self._fingerprint(xs, labels, eps, keys, probe_logits, surrogate_logits)
        if jax.process_count() > 1:
            mine = zlib.crc32(json.dumps(fingerprint, sort_keys=True).encode()) & 0x7FFFFFFF
            if len(set(parallel._allgather_ints([mine])[:, 0].tolist())) != 1:
                raise ValueError("evaluate: the processes pass different `xs`, `labels`, `eps` or "
                                 "`key` with data_layout='global' (use data_layout='local' for "
                                 "own rows).")
        state = self._load(state_path, fingerprint)
        if jax.process_count() > 1:
            done = 0 if state is None else 1 + len(state["done"])
            if len(set(parallel._allgather_ints([done])[:, 0].tolist())) != 1:
                raise ValueError(f"`state_path` {state_path}: the processes read different "
                                 "states (every process must see the same file system).")
        if state is not None:
            # WARNING level: Python shows it without any logging set-up (a resumed evaluation
            # must never pass unnoticed).
            logger.warning("evaluate: resumed %s: reused the clean pass and stages %s; "
                           "running %s.",
                           state_path, state["done"] or "none",
                           [s for s in self.stages if s not in state["done"]] or "none")
        checks = self._masking_checks(probe, labels[:PROBE_ROWS])
        if state is None:
            pred, finite = parallel.run_chunked(
                lambda x: (jnp.argmax(self._det(x)), jnp.all(jnp.isfinite(self._det(x)))),
                (xs,), data_layout="global", chunk_size=self.batch_size, mesh=self.mesh,
                cache=self._compiled["clean"])
            state = dict(clean_pred=pred.astype(np.int64), clean_correct=(pred == labels) & finite,
                         invalid=~finite, broken_by=np.full(n, -1, np.int64), x_adv=xs.copy(),
                         passes=np.zeros((n, len(self.stages), 2), np.int64), done=[],
                         robust_accuracy={}, seconds={}, compile_seconds={}, attacked={},
                         skipped={})
            self._save(state_path, state, fingerprint)
        robust = state["clean_correct"] & ~state["invalid"] & (state["broken_by"] < 0)
        for i, name in enumerate(self.stages):
            if name in state["done"]:
                continue
            if name in CONDITIONAL_STAGES:
                so_far = checks + [diagnostics.check_square(
                    {s: state["robust_accuracy"][s] for s in self.stages[:i]})]
                suspected, reason = diagnostics.masking_suspected(so_far)
                if not suspected:
                    state["skipped"][name] = reason
                    state["done"].append(name)
                    state["robust_accuracy"][name] = float(robust.mean())
                    state["seconds"][name] = state["compile_seconds"][name] = 0.0
                    state["attacked"][name] = 0
                    self._save(state_path, state, fingerprint)
                    continue
                logger.info("evaluate: running %s (%s).", name, reason)
            idx = np.flatnonzero(robust)
            args = (xs[idx], labels[idx], eps[idx], keys[idx], np.ones(len(idx), bool))
            z, s, bad, spent, run_s, comp_s = self._run_chunked(name, args, progress)
            if z is not None:
                state["passes"][idx, i] = spent
                hit = idx[s]
                state["x_adv"][hit] = z[s]
                state["broken_by"][hit] = i
                state["invalid"][idx[bad]] = True
                robust[idx[s | bad]] = False
            state["done"].append(name)
            state["robust_accuracy"][name] = float(robust.mean())
            state["seconds"][name] = run_s
            state["compile_seconds"][name] = comp_s
            state["attacked"][name] = int(len(idx))
            self._save(state_path, state, fingerprint)
        num_invalid = int(state["invalid"].sum())
        checks.append(diagnostics.check_finite_logits(num_invalid, n))
        checks.append(diagnostics.check_square(
            {s: state["robust_accuracy"][s] for s in self.stages
             if s in state["robust_accuracy"]}))
        for c in checks:
            if c.tripped:
                warnings.warn(f"evaluate: possible gradient masking ({c.name}): {c.verdict}",
                              RuntimeWarning, stacklevel=2)
        stage_success = state["broken_by"][:, None] == np.arange(len(self.stages))[None]
        mine = slice(None) if n_mine is None else slice(offset, offset + n_mine)
        ran = [s for s in self.stages if s in state["attacked"]]
        totals = state["passes"].sum(axis=0)                    # (n_stages, 2)
        fwd = {s: int(totals[self.stages.index(s), 0]) for s in ran}
        bwd = {s: int(totals[self.stages.index(s), 1]) for s in ran}
        per = {s: max(state["attacked"][s], 1) for s in ran}
        return Evaluation(
            stages=self.stages, clean_accuracy=float(state["clean_correct"].mean()),
            robust_accuracy=dict(state["robust_accuracy"]), robust=robust[mine],
            clean_correct=state["clean_correct"][mine], broken_by=state["broken_by"][mine],
            stage_success=stage_success[mine], x_adv=state["x_adv"][mine],
            seconds=dict(state["seconds"]), compile_seconds=dict(state["compile_seconds"]),
            attacked=dict(state["attacked"]), eps=eps[mine], invalid=state["invalid"][mine],
            num_invalid=num_invalid, checks=checks, passes=state["passes"][mine],
            forward_passes=fwd, backward_passes=bwd,
            forward_per_example={s: fwd[s] / per[s] for s in ran},
            backward_per_example={s: bwd[s] / per[s] for s in ran}, num_examples=n,
            skipped=dict(state["skipped"]), autoattack_stages=self.autoattack_stages)

    def _masking_checks(self, probe: np.ndarray, labels: np.ndarray) -> list:
        """The cheap checks on the probe rows: probability outputs, zero input gradients at
        the clean points, and (deterministic models) two passes that differ."""
        checks = [diagnostics.check_softmax_output(self._det, probe),
                  diagnostics.check_zero_gradients(self._det, probe, labels)]
        if not self.cfg.randomized:
            checks.append(diagnostics.check_randomness(self.logits_fn, probe, draws=2))
        return checks

    # ------------------------------------------------------------------------- state file
    def _fingerprint(self, xs, labels, eps, keys, probe_logits, surrogate_logits) -> dict:
        """What a state file must match to be resumed: the evaluation's stages and settings,
        SHA-256 digests of the exact images, labels, budgets and per-example keys (with their
        PRNG implementation), and of the model's (and the surrogate's) clean logits on the first
        ``PROBE_ROWS`` rows (computed on one device with one shape, so the same bits under any
        device count)."""
        settings = {f.name: repr(getattr(self.cfg, f.name))
                    for f in dataclasses.fields(self.cfg)}
        return dict(format=_STATE_VERSION, stages=list(self.stages), n=int(xs.shape[0]),
                    version=self.version, settings=settings, images=_digest(xs),
                    labels=_digest(labels), eps=_digest(eps),
                    keys=_digest(np.asarray(jax.random.key_data(keys))) + "/"
                    + str(jax.random.key_impl(keys)),
                    model=_digest(probe_logits),
                    surrogate=None if surrogate_logits is None else _digest(surrogate_logits))

    def _save(self, path, state, fingerprint) -> None:
        """Process 0 writes the state (a temporary file, then an atomic rename)."""
        if path is None or jax.process_index() != 0:
            return
        path = Path(path)
        meta = dict(fingerprint)
        meta.update(done=state["done"], robust_accuracy=state["robust_accuracy"],
                    seconds=state["seconds"], compile_seconds=state["compile_seconds"],
                    attacked=state["attacked"], skipped=state["skipped"])
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, clean_pred=state["clean_pred"], clean_correct=state["clean_correct"],
                 invalid=state["invalid"], broken_by=state["broken_by"],
                 x_adv=state["x_adv"], passes=state["passes"],
                 meta=np.asarray(json.dumps(meta)))
        os.replace(tmp, path)

    def _load(self, path, fingerprint):
        if path is None or not Path(path).exists():
            return None
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            if meta.get("format") != _STATE_VERSION:
                raise ValueError(
                    f"`state_path` {path} was written in state format {meta.get('format')!r}; "
                    f"this advjax reads format {_STATE_VERSION} (it also records the model "
                    "passes per example and stage). Delete the file or pass another "
                    "`state_path` to run the evaluation again.")
            names = {"images": "other images `xs`", "labels": "other `labels`",
                     "eps": "other budgets `eps`", "keys": "another `key`",
                     "model": "another model (the SHA-256 digest of its clean logits differs "
                              "from this `logits_fn`'s)",
                     "surrogate": "another `surrogate` (or none where one was given, or the "
                                  "reverse)"}
            differ = [names.get(field, f"{field}: {meta.get(field)!r}, here "
                                       f"{fingerprint[field]!r}")
                      for field in fingerprint if meta.get(field) != fingerprint[field]]
            if differ:
                raise ValueError(f"`state_path` {path} was made for another evaluation "
                                 f"({'; '.join(differ)}).")
            return dict(clean_pred=f["clean_pred"].copy(),
                        clean_correct=f["clean_correct"].copy(), invalid=f["invalid"].copy(),
                        broken_by=f["broken_by"].copy(), x_adv=f["x_adv"].copy(),
                        passes=f["passes"].copy(), done=list(meta["done"]),
                        robust_accuracy=dict(meta["robust_accuracy"]),
                        seconds=dict(meta["seconds"]),
                        compile_seconds=dict(meta["compile_seconds"]),
                        attacked=dict(meta["attacked"]), skipped=dict(meta["skipped"]))


def evaluate(logits_fn: Callable, xs, labels, *, eps, key: Array, norm: str = "linf",
             version: str = "standard", attacks: Sequence[str] | None = None,
             batch_size: int = 256, mesh=None, state_path: str | os.PathLike | None = None,
             progress: bool | Callable = False, data_layout: str = "global",
             lo: float | None = 0.0, hi: float | None = 1.0,
             surrogate: Callable | None = None, **settings: Any) -> Evaluation:
    """AutoAttack evaluation of a data set (see :class:`AutoAttackEvaluator`).

    Args:
      logits_fn: per-example ``x -> logits (K,)``.
      xs: ``(n, ...)`` examples in ``[lo, hi]``; labels: ``(n,)`` int (``n``: see ``data_layout``).
      eps: budget, scalar or ``(n,)`` (input units of ``norm``).
      key: base key; the example of global index ``j`` uses ``fold_in(key, j)``.
      norm, version, attacks, lo, hi, surrogate, **settings: as
        :func:`advjax.attacks.autoattack`. ``version="adaptive"``: AutoAttack's standard stages,
        then the adaptive ones on the examples still robust ("transfer" on ``surrogate`` when
        given; "square-restarts" only when a gradient-masking check tripped:
        :func:`advjax.attacks.diagnostics.masking_suspected`); the result is the per-example
        worst case over all of them and :meth:`Evaluation.table` says which stage broke how
        many examples beyond AutoAttack.
      batch_size, mesh: rows per compiled call over all processes; devices (default all).
      state_path: resumable state file (``.npz``), written atomically by process 0 after every
        stage; it resumes only the evaluation that made it (see
        ``AutoAttackEvaluator.__call__``).
      progress: True (a tqdm bar per stage) or a callable progress sink (see
        ``AutoAttackEvaluator.__call__``); the report moves within each stage.
      data_layout: ``"global"`` (every process passes the whole set) or ``"local"`` (each its
        own rows).

    Returns:
      :class:`Evaluation` (clean accuracy, robust accuracy after each stage, per-example flags,
      adversarial points, invalid examples, masking checks, run and compile seconds per stage).
    """
    ev = AutoAttackEvaluator(logits_fn, norm=norm, version=version, attacks=attacks,
                             batch_size=batch_size, mesh=mesh, lo=lo, hi=hi,
                             surrogate=surrogate, **settings)
    return ev(xs, labels, eps=eps, key=key, state_path=state_path, progress=progress,
              data_layout=data_layout)
