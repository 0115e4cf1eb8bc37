"""Toy study: two cached stages that log every computation, a figure and a report table."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from advjax.pipeline import Input
from advjax.studies import common


@dataclasses.dataclass(frozen=True)
class Config:
    """Toy settings.

    Attributes:
      n: number of values.
      scale: multipliers of the second stage.
      pause: seconds the second stage sleeps (time to interrupt it).
      fail: raise after the first stage.
      data: ``advjax.data`` dataset the run reads.
      data_dir: its folder.
    """

    n: int = 3
    scale: tuple[float, ...] = (1.0,)
    pause: float = 0.0
    fail: bool = False
    data: str = "digits"
    data_dir: str | None = None

    def __post_init__(self):
        common.check_config(self, positive=("n",), nonnegative=("scale", "pause"),
                            choices={"data": ("digits", "mnist_local")})


CONFIGS = {"quick": Config(), "paper": Config(n=5)}


def inputs(config: Config) -> list[Input]:
    return [Input("dataset", config.data, config.data_dir)]


def _log(name: str) -> None:
    path = os.environ.get("ADVJAX_TOY_LOG")
    if path:
        with open(path, "a") as f:
            f.write(name + "\n")


def _first(config: Config) -> np.ndarray:
    _log("first")
    return np.arange(config.n, dtype=np.float64)


def _second(config: Config, a: np.ndarray) -> float:
    marker = os.environ.get("ADVJAX_TOY_MARKER")
    if marker:
        Path(marker).write_text("second started")
    time.sleep(config.pause)
    _log("second")
    return float(np.sum(a) * sum(config.scale))


def run(config: Config, run) -> dict:
    a = run.stage("first", lambda: _first(config))
    if config.fail:
        raise RuntimeError("the toy study failed on purpose")
    b = run.stage("second", lambda: _second(config, a))
    run.figure_path("toy.txt").write_text(f"{b}\n")
    run.figure("toy.txt", "toy")
    run.table(["n", "sum"], [[config.n, b]])
    return {"n": config.n, "sum": b, "nested": {"first": a.tolist()}}
