"""Summary statistics of minimum-distortion attacks (Szegedy et al. 2013, Table 1)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from advjax._checks import check_shape


@dataclasses.dataclass(frozen=True)
class DistortionStats:
    """Summary of a batch of attack results (host-side floats, JSON-ready via :meth:`to_dict`).

    Attributes:
      n: number of examples summarised (valid ones only).
      invalid: number of examples excluded because the attack flagged their input invalid
        (``aux["valid_input"]`` False); they count nowhere else.
      clean_accuracy: fraction classified correctly before the attack.
      attacked: number of clean-correct examples (the ones an untargeted attack must move).
      success_rate: fraction of ``attacked`` examples where the attack succeeded (NaN if none).
      error_rate: fraction of ALL examples misclassified after the attack (1 − robust accuracy;
        the entries of Szegedy's Tables 2 and 4 on the attacked model).
      mean_rmse: Szegedy's "average minimum distortion": mean RMS of ``x_adv − x`` (pixels in
        ``[0, 1]``, i.e. ``sqrt(Σ (x' − x)² / n_pixels)``, papers.md §1.4) over successful
        attacked examples. NaN if there are none.
      median_rmse, std_rmse, min_rmse, max_rmse: the same population's median, standard deviation
        (population, ``ddof=0``), minimum and maximum.
      mean_rmse_all: mean RMS over every example the attack fooled, counting the ones already
        misclassified with distortion 0.
      mean_l2, mean_linf: mean L2 and L-infinity norms over successful attacked examples.
    """

    n: int
    invalid: int
    clean_accuracy: float
    attacked: int
    success_rate: float
    error_rate: float
    mean_rmse: float
    median_rmse: float
    std_rmse: float
    min_rmse: float
    max_rmse: float
    mean_rmse_all: float
    mean_l2: float
    mean_linf: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _stat(fn, values: np.ndarray) -> float:
    return float(fn(values)) if values.size else math.nan


def distortion_stats(results, mask=None) -> DistortionStats:
    """Statistics of a batched :class:`~advjax.attacks.AttackResult` (leading axis = examples).

    Args:
      results: a batched ``AttackResult`` (``jax.vmap`` of an attack) with ``success``, ``l2``,
        ``linf``, ``rmse`` and ``clean_correct`` of shape ``(N,)``.
      mask: optional ``(N,)`` bool selecting the examples to summarise.

    Rows whose ``results.aux["valid_input"]`` is False (invalid label, budget or image) are
    excluded and counted in ``DistortionStats.invalid``.

    Returns:
      A :class:`DistortionStats`.
    """
    fields = {}
    for name in ("success", "l2", "linf", "rmse", "clean_correct"):
        if not hasattr(results, name):
            raise TypeError(f"`results` must be a batched AttackResult; it has no field {name!r}.")
        value = np.asarray(getattr(results, name))
        if value.ndim != 1:
            raise ValueError(f"`results.{name}` must have shape (N,) (a batched result); "
                             f"got {value.shape}.")
        fields[name] = value
    n_all = fields["success"].shape[0]
    for name, value in fields.items():
        check_shape(value, f"results.{name}", (n_all,))
    keep = np.ones(n_all, bool)
    if mask is not None:
        check_shape(mask, "mask", (n_all,))
        keep = np.asarray(mask).astype(bool)
    aux = getattr(results, "aux", None) or {}
    valid = np.ones(n_all, bool)
    if "valid_input" in aux:
        valid = np.broadcast_to(np.asarray(aux["valid_input"]).astype(bool), (n_all,))
    n_invalid = int(np.count_nonzero(keep & ~valid))
    keep = keep & valid
    fields = {k: v[keep] for k, v in fields.items()}
    n = int(fields["success"].shape[0])
    if n == 0:
        raise ValueError("`results` (after `mask`, without the "
                         f"{n_invalid} invalid example(s)) must hold at least one example.")
    success = fields["success"].astype(bool)
    clean = fields["clean_correct"].astype(bool)
    fooled = success & clean
    rmse = fields["rmse"].astype(np.float64)
    d_fooled = rmse[fooled]
    attacked = int(np.count_nonzero(clean))
    wrong_after = (~clean) | success
    d_all = np.where(clean, rmse, 0.0)[wrong_after]
    return DistortionStats(
        n=n,
        invalid=n_invalid,
        clean_accuracy=float(np.count_nonzero(clean)) / n,
        attacked=attacked,
        success_rate=float(np.count_nonzero(fooled)) / attacked if attacked else math.nan,
        error_rate=float(np.count_nonzero(wrong_after)) / n,
        mean_rmse=_stat(np.mean, d_fooled),
        median_rmse=_stat(np.median, d_fooled),
        std_rmse=_stat(np.std, d_fooled),
        min_rmse=_stat(np.min, d_fooled),
        max_rmse=_stat(np.max, d_fooled),
        mean_rmse_all=_stat(np.mean, d_all),
        mean_l2=_stat(np.mean, fields["l2"].astype(np.float64)[fooled]),
        mean_linf=_stat(np.mean, fields["linf"].astype(np.float64)[fooled]),
    )
