"""Report types of the Lipschitz graph walk, and Markdown tables in the style of Szegedy's Table 5.

Every bound is a bound of the function in exact real arithmetic: floating-point casts (float32 to
bfloat16 and back) are taken as the identity, so a model that computes in reduced precision is
bounded as if it did not round. Rounding itself (``reduce_precision``, casts to integer types) is
a step function and the walk refuses it.
"""

from __future__ import annotations

import dataclasses

import numpy as np


class UnsupportedPrimitiveError(NotImplementedError):
    """A primitive (or a use of it) for which no sound Lipschitz rule exists in the rule table."""


@dataclasses.dataclass(frozen=True)
class LayerBound:
    """One row of a :class:`LipschitzReport` (Szegedy Table 5 style).

    Attributes:
      name: module path from the trace (e.g. ``"MnistCNN/Conv_0"``), or the primitive and an index.
      kind: ``"dense"``, ``"conv"``, ``"activation"``, ``"scale"``, ``"pool"``, ``"reduce"``,
        ``"gather"`` or ``"contrast_norm"``.
      primitive: the jaxpr primitive(s) of the row.
      in_shape: shape of the input-dependent operand.
      out_shape: shape of the output.
      param_shape: shape of the parameter (dense kernel, conv kernel in HWIO order, scale), or
        ``None``.
      stride: conv strides, or ``None``.
      bound: upper Lipschitz constant of this layer alone (L2 -> L2).
    """

    name: str
    kind: str
    primitive: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    param_shape: tuple[int, ...] | None
    stride: tuple[int, ...] | None
    bound: float


@dataclasses.dataclass(frozen=True)
class LipschitzReport:
    """Result of :func:`advjax.lipschitz.layer_bounds`.

    Attributes:
      rows: one :class:`LayerBound` per layer in execution order.
      total: sound upper bound of the L2 Lipschitz constant of the whole ``logits_fn`` in exact
        arithmetic (per-value propagation: products along paths, sums at residual additions, with
        per-channel scalings folded into the adjacent linear operator where that is tighter).
      input_shape: shape of the analysed input.
      output_shape: shape of the output (logits).
      unfolded_total: the same walk without folding (every scaling its own factor ``max |c|``);
        ``total <= unfolded_total``.
    """

    rows: tuple[LayerBound, ...]
    total: float
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    unfolded_total: float | None = None

    @property
    def product(self) -> float:
        """Product of all row bounds (Szegedy's ``∏ L_k``; a bound only for plain chains)."""
        return float(np.prod([r.bound for r in self.rows])) if self.rows else 1.0

    def to_markdown(self) -> str:
        """Markdown table of the rows (:func:`table5`) and the total."""
        return table5(self)


def _size(row: LayerBound) -> str:
    if row.kind == "conv" and row.param_shape is not None and len(row.param_shape) == 4:
        kh, kw, ci, co = row.param_shape  # HWIO (as traced)
        return f"{ci}×{kh}×{kw}×{co}"
    if row.param_shape is not None and row.kind == "dense":
        return "×".join(str(v) for v in row.param_shape)
    return "×".join(str(v) for v in row.out_shape)


def _stride(row: LayerBound) -> str:
    if row.stride is None:
        return "N/A"
    s = tuple(int(v) for v in row.stride if int(v) != 1) or (1,)
    return str(s[0]) if len(set(s)) == 1 else "×".join(str(v) for v in row.stride)


def table5(report: LipschitzReport, *, digits: int = 4) -> str:
    """Markdown table with columns Layer / Kind / Size / Stride / Upper bound, plus the total.

    Args:
      report: a :class:`LipschitzReport`.
      digits: significant digits of the bounds.

    Returns:
      Markdown text: one row per layer (conv sizes as ``C_in×kh×kw×C_out`` like Szegedy's Table 5,
      dense as ``d_in×d_out``, other layers their output shape) and closing lines with the
      product of the row bounds and the sound network bound ``report.total`` (of the
      exact-arithmetic function).
    """
    lines = ["| Layer | Kind | Size | Stride | Upper bound |", "|---|---|---|---|---|"]
    for row in report.rows:
        lines.append(f"| {row.name} | {row.kind} | {_size(row)} | {_stride(row)} | "
                     f"{row.bound:.{digits}g} |")
    lines.append("")
    lines.append(f"Product of layer bounds: {report.product:.{digits}g}  ")
    if report.unfolded_total is not None and report.unfolded_total != report.total:
        lines.append(f"Network bound without folding scalings: "
                     f"{report.unfolded_total:.{digits}g}  ")
    lines.append(f"Network bound (graph walk, sound, exact arithmetic): {report.total:.{digits}g}")
    return "\n".join(lines) + "\n"
