"""Markdown tables of Lipschitz reports in the style of Szegedy et al. (2013), Table 5."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from advjax.lipschitz.graph import LipschitzReport


def _size(row) -> str:
    if row.kind == "conv" and row.param_shape is not None and len(row.param_shape) == 4:
        kh, kw, ci, co = row.param_shape  # HWIO (as traced)
        return f"{ci}×{kh}×{kw}×{co}"
    if row.param_shape is not None and row.kind == "dense":
        return "×".join(str(v) for v in row.param_shape)
    return "×".join(str(v) for v in row.out_shape)


def _stride(row) -> str:
    if row.stride is None:
        return "N/A"
    s = tuple(int(v) for v in row.stride if int(v) != 1) or (1,)
    return str(s[0]) if len(set(s)) == 1 else "×".join(str(v) for v in row.stride)


def table5(report: LipschitzReport, *, digits: int = 4) -> str:
    """Markdown table with columns Layer / Kind / Size / Stride / Upper bound, plus the total.

    Arguments:
      report: a :class:`advjax.lipschitz.LipschitzReport`.
      digits: significant digits of the bounds.

    Returns:
      Markdown text: one row per layer (conv sizes as ``C_in×kh×kw×C_out`` like Szegedy's Table 5,
      dense as ``d_in×d_out``, other layers their output shape) and two closing lines with the
      product of the row bounds and the sound network bound ``report.total``.
    """
    lines = ["| Layer | Kind | Size | Stride | Upper bound |", "|---|---|---|---|---|"]
    for row in report.rows:
        lines.append(f"| {row.name} | {row.kind} | {_size(row)} | {_stride(row)} | "
                     f"{row.bound:.{digits}g} |")
    lines.append("")
    lines.append(f"Product of layer bounds: {report.product:.{digits}g}  ")
    lines.append(f"Network bound (graph walk, sound): {report.total:.{digits}g}")
    return "\n".join(lines) + "\n"
