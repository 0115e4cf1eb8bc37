"""Renders ``benchmarks/results/attacks.json`` (written by ``attacks.py``) as Markdown tables.

Usage: ``python benchmarks/render.py [benchmarks/results/attacks.json]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def render(record: dict) -> str:
    lines = [f"Machine: {record['machine']}, {record['cpus']} cores; Python {record['python']}, "
             f"jax {record['jax']}, torch {record.get('torch', '—')}; date {record['date']}; "
             f"measured fp32 matmul roofline {record['matmul_fp32_gflops']:.0f} GFLOP/s.", "",
             "| attack | model | framework | images/s | advjax speed-up | compile s | "
             "robust acc. / mean L2 | peak RSS MB | GFLOP/s | roofline |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        strength = r.get("robust_accuracy", r.get("mean_l2"))
        gf = r.get("gflops_per_s")
        roof = r.get("roofline_fraction")
        lines.append(
            f"| {r['attack']} | {r['model']} | {r['framework']} | {r['images_per_s']:.1f} | "
            f"{r.get('advjax_speedup', float('nan')):.2f}× | {r['compile_s']:.2f} | "
            f"{strength:.4f} | {r['peak_rss_mb']:.0f} | "
            f"{'—' if gf is None else f'{gf:.1f}'} | {'—' if roof is None else f'{roof:.2f}'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/attacks.json")
    print(render(json.loads(path.read_text())))
