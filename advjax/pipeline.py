"""Reproducible experiment runs: resolved config, versions, metrics, Markdown report, figures.

An experiment is a module in ``experiments/`` that defines

* ``CONFIGS: dict[str, Config]`` — frozen dataclasses, at least ``"quick"`` and ``"paper"``;
* ``run(config, run: Run) -> dict`` — computes and returns the metrics (JSON-able), writing tables
  to ``run.report`` and figures to ``run.figure_path(name)``.

:func:`execute` resolves the config, creates the output folder, records the config, library versions
and git revision, calls ``run`` and writes ``metrics.json`` and ``report.md`` atomically.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import pkgutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from advjax import io

logger = logging.getLogger(__name__)

EXPERIMENTS_PACKAGE = "experiments"


@dataclasses.dataclass
class Run:
    """The output folder of one experiment run and its growing Markdown report."""

    name: str
    config_name: str
    out_dir: Path
    report_lines: list[str] = dataclasses.field(default_factory=list)

    def section(self, title: str, text: str = "") -> None:
        self.report_lines += [f"## {title}", ""] + ([text, ""] if text else [])

    def text(self, text: str) -> None:
        self.report_lines += [text, ""]

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.report_lines.append(markdown_table(header, rows))
        self.report_lines.append("")

    def figure_path(self, name: str) -> Path:
        path = self.out_dir / "figures" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def figure(self, name: str, caption: str) -> None:
        self.report_lines += [f"![{caption}](figures/{name})", ""]

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats are shown with 4 significant digits."""
    lines = ["| " + " | ".join(map(str, header)) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    return "\n".join(lines)


def list_experiments() -> list[str]:
    """Names of the experiments in the ``experiments`` package."""
    pkg = importlib.import_module(EXPERIMENTS_PACKAGE)
    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)
                  if not m.name.startswith("_") and m.name != "common")


def load_experiment(name: str):
    known = list_experiments()
    if name not in known:
        raise ValueError(f"unknown experiment {name!r}; expected one of {known}")
    module = importlib.import_module(f"{EXPERIMENTS_PACKAGE}.{name}")
    if not hasattr(module, "CONFIGS") or not hasattr(module, "run"):
        raise TypeError(f"experiment module {name!r} must define CONFIGS and run(config, run)")
    return module


def resolve_config(module, config_name: str, overrides: Mapping[str, Any] | None = None):
    if config_name not in module.CONFIGS:
        raise ValueError(f"unknown config {config_name!r} for this experiment; expected one of "
                         f"{sorted(module.CONFIGS)}")
    config = module.CONFIGS[config_name]
    if overrides:
        fields = {f.name: f for f in dataclasses.fields(config)}
        for key in overrides:
            if key not in fields:
                raise ValueError(f"unknown config field {key!r}; expected one of {sorted(fields)}")
        config = dataclasses.replace(config, **dict(overrides))
    return config


def execute(name: str, config_name: str = "quick", out_dir: str | Path | None = None,
            overrides: Mapping[str, Any] | None = None) -> tuple[Path, dict]:
    """Runs experiment ``name`` with config ``config_name``; returns (output folder, metrics).

    The folder holds ``config.json`` (resolved), ``versions.json``, ``metrics.json``,
    ``report.md`` and ``figures/``. Re-running into the same folder resumes from the checkpoints an
    experiment keeps under ``checkpoints/``.
    """
    module = load_experiment(name)
    config = resolve_config(module, config_name, overrides)
    out = Path(out_dir) if out_dir is not None else Path("results") / name / config_name
    out.mkdir(parents=True, exist_ok=True)
    io.atomic_write_json(out / "config.json", {"experiment": name, "config_name": config_name,
                                               "config": config})
    io.atomic_write_json(out / "versions.json", io.versions())
    run = Run(name=name, config_name=config_name, out_dir=out)
    title = (module.__doc__ or name).strip().splitlines()[0]
    run.report_lines += [f"# {title}", "",
                         f"Experiment `{name}`, config `{config_name}`. "
                         f"Command: `advjax run {name} --config {config_name}`.", ""]
    start = time.time()
    metrics = dict(module.run(config, run))
    metrics["wall_time_s"] = round(time.time() - start, 2)
    run.text(f"Wall time: {metrics['wall_time_s']:.1f} s.")
    io.atomic_write_json(out / "metrics.json", metrics)
    io.atomic_write_text(out / "report.md", "\n".join(run.report_lines) + "\n")
    return out, metrics
