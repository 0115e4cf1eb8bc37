"""Every code block of docs/evaluate_published.md runs as written (small N, real data), except
those marked ``<!-- docs-test: skip (reason) -->`` (a download advjax does not ship)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from advjax import cli
from tests.conftest import require_data

PAGE = Path(__file__).resolve().parents[1] / "docs" / "evaluate_published.md"
BLOCK = re.compile(r"(<!-- docs-test: skip \((?P<reason>[^)]+)\) -->\n)?```(?P<lang>\w+)\n"
                   r"(?P<code>.*?)```", re.S)


def blocks() -> list[tuple[str, str, str | None]]:
    return [(m["lang"], m["code"], m["reason"]) for m in BLOCK.finditer(PAGE.read_text())]


def test_every_block_is_run_or_skipped_with_a_reason():
    langs = {lang for lang, _, _ in blocks()}
    assert langs <= {"bash", "python", "text"}, langs
    skipped = [reason for _, _, reason in blocks() if reason]
    assert skipped and all(len(r) > 10 for r in skipped)


@pytest.mark.slow
def test_blocks_run(tmp_path, monkeypatch, capsys):
    require_data("advertorch-lenet5")
    require_data("woods2019-resnet44")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    ran = 0
    for lang, code, reason in blocks():
        if reason or lang == "text":
            continue
        first = code.splitlines()[0]
        if lang == "python" and re.fullmatch(r"# \w+\.py", first):
            (tmp_path / first[2:]).write_text(code)
        elif lang == "python":
            exec(compile(code, str(PAGE), "exec"), {})  # noqa: S102 - the page's own example
        else:
            for line in code.splitlines():
                if line.startswith("advjax "):
                    assert cli.main(shlex.split(line)[1:]) == 0, capsys.readouterr().err
                    ran += 1
    assert ran == 2
    assert (tmp_path / "results" / "evaluate" / "ensemble" / "metrics.json").is_file()
