"""The README stays true: its example runs, and CI runs exactly its test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_python_example_runs(capsys):
    (code,) = _blocks("python")
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    printed = capsys.readouterr().out.split()
    success_rate, max_rmse = float(printed[0]), float(printed[1])
    assert 0.2 < success_rate <= 1.0
    assert 0.0 < max_rmse <= 2.0 / (8 * 8) ** 0.5 + 1e-5  # L2 <= eps = 2 over 64 pixels


def test_ci_runs_the_readme_test_command():
    commands = [line.strip() for block in _blocks("bash") for line in block.splitlines()
                if line.strip() and not line.strip().startswith("#")]
    test_command = next(c for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci
