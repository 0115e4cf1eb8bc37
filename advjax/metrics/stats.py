"""Confidence intervals and claim verdicts for reported numbers.

* :func:`wilson`: Wilson score interval of a proportion (accuracy, success rate, error rate).
* :func:`bootstrap`: seeded percentile bootstrap over examples of any statistic (mean distortion,
  ARA) of one or more per-example arrays resampled together.
* :func:`paired_difference`: bootstrap of ``stat(a) − stat(b)`` for two models measured on the same
  examples (one resampling of the example indices shared by both).
* :func:`direction_verdict`, :func:`equivalence_verdict`, :func:`threshold_verdict`: a paper's
  claim stated as ``"reproduced"``, ``"not reproduced"`` or ``"inconclusive"`` from an interval;
  :class:`Claim` carries the verdict with the measured values.

Intervals are two-sided at ``confidence`` (default 95%). A statistic of no data, or one that is
NaN (e.g. the mean distortion of an attack that never succeeded), gives a NaN interval, and every
verdict on a NaN interval is ``"inconclusive"``.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence

import numpy as np

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
DEFAULT_RESAMPLES = 2000


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval.

    Attributes:
      estimate: the statistic on the full sample (NaN: undefined, e.g. no data).
      low, high: interval bounds, ``low <= estimate <= high`` for Wilson; NaN when undefined.
      confidence: coverage level in (0, 1).
      n: number of examples (or trials) behind the statistic.
      method: ``"wilson"`` or ``"bootstrap"``.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    n: int
    method: str

    @property
    def defined(self) -> bool:
        return all(math.isfinite(v) for v in (self.estimate, self.low, self.high))

    def format(self, digits: int = 3) -> str:
        """``"0.842 [0.801, 0.877]"`` (or ``"NaN"``)."""
        if not self.defined:
            return "NaN" if not math.isfinite(self.estimate) else f"{self.estimate:.{digits}g}"
        return f"{self.estimate:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}]"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return self.format()


def _check_confidence(confidence: float) -> float:
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise ValueError(f"`confidence` must be in (0, 1); got {confidence!r}")
    return float(confidence)


def _nan(n: int, confidence: float, method: str) -> Interval:
    return Interval(math.nan, math.nan, math.nan, confidence, n, method)


def wilson(successes, n: int | None = None, *, confidence: float = 0.95) -> Interval:
    """Wilson score interval of a proportion.

    Args:
      successes: a count (with ``n``), or a ``(n,)`` array of booleans / 0-1 values (``n=None``).
      n: number of trials (``>= 0``); 0 trials give a NaN interval.
      confidence: coverage level.

    Returns:
      ``Interval`` with ``estimate = successes / n`` and the Wilson bounds (within [0, 1]).
    """
    confidence = _check_confidence(confidence)
    if n is None:
        values = np.asarray(successes).reshape(-1)
        if values.size and not np.all((values == 0) | (values == 1)):
            raise ValueError("`successes`: an array of booleans or 0/1 values was expected")
        k, n = int(np.sum(values)), int(values.size)
    else:
        k = int(successes)
        if n < 0 or not 0 <= k <= n:
            raise ValueError(f"`successes`={successes!r} and `n`={n!r}: need 0 <= successes <= n")
    if n == 0:
        return _nan(0, confidence, "wilson")
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), confidence, n, "wilson")


def _resample_indices(n: int, seed: int, resamples: int) -> np.ndarray:
    if not (isinstance(resamples, int) and resamples >= 100):
        raise ValueError(f"`resamples` must be an int >= 100; got {resamples!r}")
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(resamples, n))


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _as_arrays(arrays: Sequence) -> list[np.ndarray]:
    out = [np.asarray(a) for a in arrays]
    if not out:
        raise ValueError("at least one per-example array is required")
    n = out[0].shape[0] if out[0].ndim else -1
    if n < 0 or any(a.ndim == 0 or a.shape[0] != n for a in out):
        raise ValueError("the per-example arrays must share their leading size; got shapes "
                         f"{[a.shape for a in out]}")
    return out


def bootstrap(*arrays, statistic: Callable[..., float] = np.mean, seed: int = 0,
              resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95) -> Interval:
    """Seeded percentile bootstrap over examples of ``statistic(*arrays)``.

    Args:
      *arrays: per-example arrays with the same leading size ``n`` (resampled together, e.g.
        distortions and correctness for an ARA).
      statistic: maps the (resampled) arrays to a float; default the mean of one array.
      seed: resampling seed (the same seed gives the same interval).
      resamples: number of bootstrap samples (>= 100).
      confidence: coverage level.

    Returns:
      ``Interval`` (NaN when ``n == 0`` or the statistic is NaN on the full sample).
    """
    confidence = _check_confidence(confidence)
    data = _as_arrays(arrays)
    n = data[0].shape[0]
    if n == 0:
        return _nan(0, confidence, "bootstrap")
    estimate = float(statistic(*data))
    if not math.isfinite(estimate):
        return _nan(n, confidence, "bootstrap")
    idx = _resample_indices(n, seed, resamples)
    stats = np.array([statistic(*[a[i] for a in data]) for i in idx], np.float64)
    lo, hi = _percentiles(stats, confidence)
    return Interval(estimate, lo, hi, confidence, n, "bootstrap")


def paired_difference(a: Sequence, b: Sequence, *, statistic: Callable[..., float] = np.mean,
                      seed: int = 0, resamples: int = DEFAULT_RESAMPLES,
                      confidence: float = 0.95) -> Interval:
    """Bootstrap interval of ``statistic(*a) − statistic(*b)`` on the same examples.

    Args:
      a, b: per-example arrays of the two models (one array, or a tuple of arrays passed to
        ``statistic`` together), row ``i`` of both being the same example; every bootstrap sample
        draws one set of example indices for both, so the pairing is kept.
      statistic, seed, resamples, confidence: as in :func:`bootstrap`.

    Returns:
      ``Interval`` of the difference (positive: ``a`` larger).
    """
    a = tuple(a) if isinstance(a, tuple) else (a,)
    b = tuple(b) if isinstance(b, tuple) else (b,)
    data = _as_arrays((*a, *b))
    k = len(a)
    diff = lambda *arrs: float(statistic(*arrs[:k]) - statistic(*arrs[k:]))
    return bootstrap(*data, statistic=diff, seed=seed, resamples=resamples,
                     confidence=confidence)


def difference(a: Interval, b: Interval) -> Interval:
    """Interval of ``a − b`` for independent estimates (half-widths added in quadrature)."""
    if not (a.defined and b.defined):
        return _nan(min(a.n, b.n), a.confidence, "independent")
    lo = math.hypot(a.estimate - a.low, b.high - b.estimate)
    hi = math.hypot(a.high - a.estimate, b.estimate - b.low)
    d = a.estimate - b.estimate
    return Interval(d, d - lo, d + hi, a.confidence, min(a.n, b.n), "independent")


def direction_verdict(diff: Interval) -> str:
    """Verdict on a claim "the difference is positive": reproduced when the whole interval lies
    above 0, not reproduced when it lies at or below 0, inconclusive when it straddles 0."""
    if not diff.defined:
        return INCONCLUSIVE
    if diff.low > 0:
        return REPRODUCED
    if diff.high <= 0:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def threshold_verdict(value: Interval, threshold: float) -> str:
    """Verdict on "the quantity exceeds ``threshold``" (interval above / at or below / across)."""
    if not value.defined:
        return INCONCLUSIVE
    if value.low > threshold:
        return REPRODUCED
    if value.high <= threshold:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def equivalence_verdict(diff: Interval, margin: float) -> str:
    """Verdict on "the two are about equal": reproduced when the interval of the difference lies
    inside ``(−margin, margin)``, not reproduced when it lies wholly outside, else inconclusive."""
    if margin <= 0:
        raise ValueError(f"`margin` must be positive; got {margin!r}")
    if not diff.defined:
        return INCONCLUSIVE
    if -margin < diff.low and diff.high < margin:
        return REPRODUCED
    if diff.low >= margin or diff.high <= -margin:
        return NOT_REPRODUCED
    return INCONCLUSIVE


@dataclasses.dataclass(frozen=True)
class Claim:
    """A paper's claim with its verdict and the measured values behind it.

    Attributes:
      statement: the claim, e.g. "stronger weight decay raises the distortion needed".
      verdict: one of :data:`VERDICTS`.
      evidence: the measured values with their intervals, as a sentence fragment.
      blocked_by: why no verdict could be reached (e.g. a failed attack); ``""`` if none.
    """

    statement: str
    verdict: str
    evidence: str
    blocked_by: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"`verdict` must be one of {VERDICTS}; got {self.verdict!r}")

    def sentence(self) -> str:
        """``"**Reproduced** — <statement>: <evidence>."`` for a report."""
        why = f" Blocked: {self.blocked_by}." if self.blocked_by else ""
        return f"**{self.verdict.capitalize()}** — {self.statement}: {self.evidence}.{why}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def blocked(statement: str, reason: str, evidence: str = "no measurement") -> Claim:
    """An inconclusive claim whose evidence could not be measured (e.g. the attack failed)."""
    return Claim(statement, INCONCLUSIVE, evidence, blocked_by=reason)


def attack_failure(success, distortions=None) -> str:
    """Why an attack's results cannot support a claim (``""`` when they can).

    Args:
      success: ``(n,)`` booleans, the attack succeeded on example ``i``.
      distortions: optional ``(n,)`` distortions; NaN on every successful example also fails.
    """
    success = np.asarray(success, bool).reshape(-1)
    if success.size == 0:
        return "no example was attacked"
    if not success.any():
        return f"the attack failed on every example (success 0/{success.size})"
    if distortions is not None:
        d = np.asarray(distortions, np.float64).reshape(-1)
        if d.shape != success.shape:
            raise ValueError(f"`distortions` shape {d.shape} != `success` shape {success.shape}")
        if not np.isfinite(d[success]).any():
            return "the attack's distortions are NaN"
    return ""


def verdict_summary(claims: Sequence[Claim]) -> dict[str, int]:
    """How many claims got each verdict."""
    return {v: sum(c.verdict == v for c in claims) for v in VERDICTS}
