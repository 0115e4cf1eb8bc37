"""Pieces shared by the studies: inputs, training a classifier, attacking a set in chunks,
and the confidence intervals beside every reported number."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from advjax import data as data_lib
from advjax import parallel, train
from advjax.metrics import stats
from advjax.pipeline import Input

logger = logging.getLogger(__name__)

WOODS_CHECKPOINT_FOLDER = "woods2019-resnet44"


def check_config(config, *, positive: Sequence[str] = (), nonnegative: Sequence[str] = (),
                 choices: Mapping[str, Sequence[Any]] | None = None) -> None:
    """The one validating boundary of a study config (called by its ``__post_init__``).

    It runs when a preset is defined and whenever ``--set`` overrides are applied
    (``dataclasses.replace``), so a run with an invalid value stops before anything is written.
    A tuple field's rule applies to each of its items.

    Args:
      config: the config dataclass instance.
      positive: fields whose numbers must be finite and > 0 (counts, rates, radii).
      nonnegative: fields whose numbers must be finite and >= 0 (seeds, indices, momenta).
      choices: fields whose values (or items) must be one of the given names.

    Raises:
      ValueError: naming the field, the value and what was expected.
    """

    def items(name):
        value = getattr(config, name)
        return value if isinstance(value, tuple) else (value,)

    def fail(name, expected):
        raise ValueError(f"config field {name!r} = {getattr(config, name)!r}: expected "
                         f"{expected}")

    for name in positive:
        if not all(np.isfinite(v) and v > 0 for v in items(name)):
            fail(name, "a number > 0" + (" for every item" if isinstance(
                getattr(config, name), tuple) else ""))
    for name in nonnegative:
        if not all(np.isfinite(v) and v >= 0 for v in items(name)):
            fail(name, "a number >= 0" + (" for every item" if isinstance(
                getattr(config, name), tuple) else ""))
    for name, known in (choices or {}).items():
        bad = [v for v in items(name) if v not in known]
        if bad:
            fail(name, f"{'items' if isinstance(getattr(config, name), tuple) else 'one'} "
                       f"of {list(known)} (unknown: {bad})")


def dataset_input(name: str, data_dir: str | None, required: bool = True) -> Input:
    """The input record of dataset ``name`` (checked and fingerprinted before a run)."""
    return Input("dataset", name, data_dir, required=required)


def woods_checkpoints_input(data_dir: str | None, files, required: bool = True) -> Input:
    """The released Woods et al. ResNet-44 checkpoint files under the data folder."""
    return Input("files", WOODS_CHECKPOINT_FOLDER, data_dir, files=tuple(files), required=required)


def woods_checkpoint_folder(data_dir: str | None) -> Path | None:
    """The checkpoint folder when it exists (``None``: absent, an optional part is skipped)."""
    try:
        folder = data_lib.resolve_data_dir(data_dir) / WOODS_CHECKPOINT_FOLDER
    except FileNotFoundError:
        return None
    return folder if folder.is_dir() else None


def rate_ci(flags) -> stats.Interval:
    """Wilson interval of the fraction of true ``flags`` (accuracy, success, error)."""
    return stats.wilson(np.asarray(flags, bool))


def mean_ci(values, seed: int) -> stats.Interval:
    """Seeded bootstrap interval of the mean of ``values`` over examples (finite ones)."""
    v = np.asarray(values, np.float64).reshape(-1)
    return stats.bootstrap(v[np.isfinite(v)], seed=seed)


def ci_dict(interval: stats.Interval) -> dict:
    """``{"value", "ci_low", "ci_high", "n"}`` for metrics.json."""
    return {"value": interval.estimate, "ci_low": interval.low, "ci_high": interval.high,
            "n": interval.n}


def interval(d: Mapping[str, Any], method: str = "") -> stats.Interval:
    """The :class:`~advjax.metrics.stats.Interval` of a :func:`ci_dict` (95%)."""
    nan = float("nan")
    val = lambda k: nan if d.get(k) is None else float(d[k])
    return stats.Interval(val("value"), val("ci_low"), val("ci_high"), 0.95, int(d.get("n", 0)),
                          method)


def correct(logits_fn, xs, labels) -> np.ndarray:
    """``(N,)`` bool: clean prediction right (streamed in fixed-size chunks)."""
    preds = parallel.stream(lambda x: jnp.argmax(logits_fn(x)), np.asarray(xs), chunk_size=512)
    return np.asarray(preds) == np.asarray(labels)


def load_split(name: str, split: str, data_dir: str | None = None, limit: int | None = None):
    """``(images, labels)`` numpy arrays of one split (see :func:`advjax.data.load`)."""
    ds = data_lib.load(name, split, data_dir=data_dir, limit=limit)
    return np.asarray(ds.images), np.asarray(ds.labels)


def train_classifier(
    module,
    train_set: tuple[np.ndarray, np.ndarray],
    eval_set: tuple[np.ndarray, np.ndarray] | None,
    *,
    seed: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    config: train.TrainConfig = train.TrainConfig(),
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    optimizer: optax.GradientTransformation | None = None,
    pool_size: int | None = None,
) -> tuple[train.TrainState, list[dict]]:
    """Trains ``module`` with Adam (or ``optimizer``) and ``config``; resumes from checkpoints."""
    key = jax.random.key(seed)
    init_key, data_key = jax.random.split(key)
    opt = optimizer or optax.adam(learning_rate)
    state = train.create_train_state(module, init_key, jnp.asarray(train_set[0][:1]), opt,
                                     pool_size=pool_size)
    return train.fit(state, train_set, key=data_key, epochs=epochs, batch_size=batch_size,
                     config=config, eval_data=eval_set, checkpoint_dir=checkpoint_dir,
                     progress=progress)


def logits_fn_of(state: train.TrainState) -> Callable[[jax.Array], jax.Array]:
    """Per-example inference-mode ``logits_fn`` of a trained state."""
    fn, _ = train.example_logits_fn(state, train=False)
    return fn


def error_rate(logits_fn, xs, labels, chunk_size: int = 512) -> float:
    return float(np.mean(~correct(logits_fn, xs, labels)))


def run_attack(attack, xs, labels, *, chunk_size: int = 256, progress: bool = True,
               desc: str = "attack", **per_example: Any):
    """Runs a per-example attack over a whole set in fixed-size chunks (sharded when possible)."""
    return parallel.stream(attack, np.asarray(xs), np.asarray(labels), chunk_size=chunk_size,
                           progress=progress, desc=desc, **per_example)


def example_keys(seed: int, n: int) -> jax.Array:
    """Per-example keys ``fold_in(key(seed), i)``: independent of batch size and device count."""
    return parallel.example_keys(jax.random.key(seed), n)


def summarize_history(history: list[dict]) -> Mapping[str, Any]:
    last = history[-1] if history else {}
    return {"epochs": last.get("epoch"), "train": last.get("train"), "eval": last.get("eval")}


def szegedy_module(name: str, input_shape: tuple[int, ...]):
    """The Table-1/3 module of ``name`` for inputs of ``input_shape`` (AE400-10 needs it)."""
    from advjax.models import AutoencoderClassifier, szegedy_model

    if name.startswith("AE400-10"):
        return AutoencoderClassifier(input_shape=tuple(input_shape))
    return szegedy_model(name)


def train_szegedy(name: str, train_set, eval_set, *, seed: int, epochs: int, batch_size: int,
                  learning_rate: float, checkpoint_dir: Path | None, ae_epochs: int | None = None,
                  progress: bool = True, extra: train.TrainConfig | None = None):
    """Trains one Szegedy model by its Table-1/3 name with the paper's per-layer weight decay.

    ``FC10(λ)`` names set λ; ``AE400-10`` is a sparse autoencoder pretrained for ``ae_epochs``
    then frozen, with only the softmax trained on its code. ``extra`` adds adversarial / pool
    settings to the step config (its ``weight_decay`` is replaced by the paper's).
    """
    from advjax.models import SZEGEDY_WEIGHT_DECAY

    base = name.rstrip("'")
    decay = SZEGEDY_WEIGHT_DECAY.get(base)
    if decay is None:
        raise ValueError(f"no weight decay known for {name!r}; expected one of "
                         f"{sorted(SZEGEDY_WEIGHT_DECAY)}")
    module = szegedy_module(base, train_set[0].shape[1:])
    config = dataclasses.replace(extra or train.TrainConfig(), weight_decay=decay)
    ckpt = lambda stage: None if checkpoint_dir is None else Path(checkpoint_dir) / stage
    if not base.startswith("AE400-10"):
        pool = config.pool.size if config.pool is not None else None
        return train_classifier(module, train_set, eval_set, seed=seed, epochs=epochs,
                                batch_size=batch_size, learning_rate=learning_rate,
                                config=config, checkpoint_dir=ckpt("classifier"),
                                progress=progress, pool_size=pool)
    key = jax.random.key(seed)
    init_key, ae_key, clf_key = jax.random.split(key, 3)
    state = train.create_train_state(module, init_key, jnp.asarray(train_set[0][:1]),
                                     optax.adam(learning_rate))
    state, _ = train.fit(state, train_set, key=ae_key, epochs=ae_epochs or epochs,
                         batch_size=batch_size, step_fn=train.autoencoder_train_step(),
                         checkpoint_dir=ckpt("autoencoder"), progress=progress)
    # The softmax on a frozen sigmoid code is a convex problem that Adam at the network's rate
    # solves slowly; it gets ten times the rate.
    state = train.classifier_state(state, optax.adam(10 * learning_rate))
    return train.fit(state, train_set, key=clf_key, epochs=epochs, batch_size=batch_size,
                     config=dataclasses.replace(config, weight_decay={"classifier": decay[0]}),
                     eval_data=eval_set, checkpoint_dir=ckpt("classifier"), progress=progress)



# A network bound more than this many times the largest local Jacobian norm found is called
# astronomically loose: the certificate it gives says next to nothing about the network.
LOOSE_BOUND_RATIO = 1e6


def certificate_remarks(radii, quantization_step: float, bound: float,
                        lower: float | None = None) -> dict:
    """What a Lipschitz certificate is worth: radii in quantisation steps, vacuity, looseness.

    Args:
      radii: ``(n,)`` certified L2 radii (input units) of the examples the network classifies
        correctly (a misclassified one has no certificate; pass only the others).
      quantization_step: the input's quantisation step (``1/255`` for 8-bit images). A radius
        below it is *vacuous*: no other image the data could hold lies within it.
      bound: the network's upper Lipschitz bound ``L``.
      lower: the largest local Jacobian norm found (a lower bound of the Lipschitz constant), or
        ``None`` when none was computed.

    Returns:
      ``{"quantization_step", "mean_radius_steps", "vacuous_fraction", "all_vacuous",
      "bound_to_lower", "loose", "remark"}``: ``mean_radius_steps`` is the mean radius divided by
      the step; ``vacuous_fraction`` the share of radii below one step; ``loose`` is ``True`` when
      ``bound > LOOSE_BOUND_RATIO × lower`` (``None`` without a lower bound); ``remark`` says both
      in words (empty when neither applies).
    """
    if not (np.isfinite(quantization_step) and quantization_step > 0):
        raise ValueError(f"`quantization_step` must be a number > 0; got {quantization_step!r}")
    r = np.asarray(radii, np.float64).reshape(-1)
    steps = r / quantization_step
    vacuous = r < quantization_step
    ratio = float(bound / lower) if lower is not None and lower > 0 else None
    loose = None if ratio is None else bool(not ratio <= LOOSE_BOUND_RATIO)
    remarks = []
    if r.size and vacuous.all():
        remarks.append(f"Every certified radius is vacuous: below the input's quantisation step "
                       f"{quantization_step:.4g} (mean {np.mean(steps):.3g} steps), so the "
                       "certificate excludes no other image the data could hold.")
    elif vacuous.any():
        remarks.append(f"{int(vacuous.sum())} of {r.size} certified radii are vacuous (below "
                       f"the input's quantisation step {quantization_step:.4g}).")
    if loose:
        remarks.append(f"The bound {bound:.4g} is astronomically loose: {ratio:.3g} times the "
                       f"largest local Jacobian norm found ({lower:.4g}); the rule: more than "
                       f"{LOOSE_BOUND_RATIO:.0e} times.")
    return {"quantization_step": float(quantization_step),
            "mean_radius_steps": float(np.mean(steps)) if r.size else float("nan"),
            "vacuous_fraction": float(np.mean(vacuous)) if r.size else float("nan"),
            "all_vacuous": bool(r.size and vacuous.all()),
            "bound_to_lower": ratio, "loose": loose, "remark": " ".join(remarks)}
