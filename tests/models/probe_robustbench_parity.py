"""The parity table of the RobustBench fixtures: architecture, parameters, largest logit difference.

Run from the repository root: ``python -m tests.models.probe_robustbench_parity``. Prints one
Markdown row per fixture of ``tests/models/fixtures/robustbench/`` (imported with the torch-free
reader, applied in float32, compared with the PyTorch logits stored beside it) and one per
full-size architecture (parameters from ``jax.eval_shape`` against the PyTorch count in the
manifest). ``tests/models/test_robustbench_import.py`` asserts the same within its tolerance.
"""

from __future__ import annotations

import jax
import numpy as np

from advjax.models import robustbench as rb
from tests.models.test_robustbench_import import MANIFEST, NAMES, _load


def main() -> None:
    print("| fixture | architecture | layout | parameters | max abs logit diff "
          "| relative to max abs logit |")
    print("|---|---|---|---|---|---|")
    for name in NAMES:
        f, module, variables, _, x, want = _load(name)
        got = np.asarray(jax.jit(module.apply)(variables, x))
        diff = float(np.max(np.abs(got - want)))
        print(f"| {name} | {f['arch']} | {f['layout']} | {f['params']:,} | {diff:.2e} | "
              f"{diff / float(np.abs(want).max()):.2e} |")
    print()
    print("| full-size architecture | parameters, PyTorch | parameters, Flax (eval_shape) |")
    print("|---|---|---|")
    for arch, n in sorted(MANIFEST["full_size_params"].items()):
        print(f"| {arch} | {n:,} | {rb.count_params(rb.build(arch)):,} |")


if __name__ == "__main__":
    main()
