"""The documentation site builds with warnings as errors, lists every public name, and its
cookbook runs; a broken cross-reference in a docstring fails the build."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import doc_blocks

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("attacks", "lipschitz", "models", "data", "train", "metrics", "explain")


def _mkdocs(config: Path, site: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config),
                           "-d", str(site)], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = _mkdocs(ROOT / "mkdocs.yml", out, ROOT)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return out


@pytest.mark.slow
def test_site_builds_strict_and_documents_every_public_name(site):
    missing = []
    for pkg in PACKAGES:
        html = (site / "api" / pkg / "index.html").read_text()
        module = importlib.import_module(f"advjax.{pkg}")
        for name in module.__all__:
            # a function exported under its module's name is rendered at its canonical path
            ids = (f'id="advjax.{pkg}.{name}"', f'id="advjax.{pkg}.{name}.{name}"')
            if not any(i in html for i in ids):
                missing.append(f"advjax.{pkg}.{name}")
    html = (site / "api" / "parallel" / "index.html").read_text()
    for name in ("shard_attack", "stream", "make_mesh", "initialize_distributed"):
        if f'id="advjax.parallel.{name}"' not in html:
            missing.append(f"advjax.parallel.{name}")
    assert not missing, missing
    for page in ("concepts", "cookbook", "notebooks/04_nnx"):
        assert (site / page / "index.html").is_file(), page
    # Sphinx roles became links: nnx_from_linen's docstring cites :class:`~advjax.models.MnistCNN`
    models = (site / "api" / "models" / "index.html").read_text()
    assert 'href="#advjax.models.MnistCNN"' in models
    assert ":class:`" not in models and ":func:`" not in models


_BROKEN = '''"""A package with one good and one broken cross-reference."""

def good():
    """Points at :func:`bad`."""


def bad():
    """Points at :func:`advjax.does_not_exist`."""
'''


@pytest.mark.slow
def test_a_broken_cross_reference_fails_the_build(tmp_path):
    pkg = tmp_path / "src" / "advjax"
    pkg.mkdir(parents=True)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# API\n\n::: advjax\n")
    config = ROOT / "mkdocs.yml"
    text = config.read_text()
    text = re.sub(r"\nnav:.*", "\n", text, flags=re.S)
    text = re.sub(r"  - mkdocs-jupyter:.*?include_source: true\n", "", text, flags=re.S)
    text = text.replace("paths: [.]", f"paths: [{tmp_path / 'src'}]")
    text = text.replace("docs/griffe_roles.py", str(ROOT / "docs" / "griffe_roles.py"))
    text = text.replace("docs_dir: docs", f"docs_dir: {docs}")
    cfg = tmp_path / "mkdocs.yml"

    def build(target: str) -> subprocess.CompletedProcess:
        (pkg / "__init__.py").write_text(_BROKEN.replace("advjax.does_not_exist", target))
        cfg.write_text(text)
        return _mkdocs(cfg, tmp_path / f"site_{target.replace('.', '_')}", tmp_path)

    broken = build("advjax.does_not_exist")
    assert broken.returncode != 0
    assert "advjax.does_not_exist" in broken.stderr
    fine = build("advjax.good")
    assert fine.returncode == 0, fine.stderr[-4000:]


DOC_PAGES = [p for p in doc_blocks.doc_files() if p != "README.md"]  # README: test_readme.py


@pytest.mark.slow
@pytest.mark.parametrize("page", DOC_PAGES)
def test_every_block_of_the_page_runs_in_order(page, tmp_path):
    """Each page's Python blocks run in order in one fresh process; its shell blocks name real
    commands, studies, options, extras and files (tests/doc_blocks.py)."""
    output, left_out = doc_blocks.run_file(page, tmp_path)
    if page == "docs/cookbook.md":
        clean = float(re.search(r"clean accuracy\s+([\d.]+)", output).group(1))
        curve = [float(v) for v in re.findall(r"eps [\d.]+  robust accuracy ([\d.]+)", output)]
        assert clean > 0.8, output  # a 3-epoch CNN on digits: measured 0.93
        assert len(curve) == 7 and curve[0] > 0.8, output  # eps = 0: the clean accuracy
        assert all(a >= b for a, b in zip(curve, curve[1:], strict=False)), output  # common keys
        stages = dict(re.findall(r"^(\S+)\s+robust accuracy ([\d.]+)  attacked", output, re.M))
        assert list(stages) == ["apgd-ce", "apgd-t", "fab-t", "square"], output
        robust = [float(v) for v in stages.values()]
        # robust accuracy is cumulative over the stages and never above the clean accuracy
        # (64 digits here vs 200 for `clean`: a loose bound, hence only <=)
        assert all(a >= b for a, b in zip(robust, robust[1:], strict=False)) and robust[0] <= clean
        assert "resumed, same result: True" in output
        assert (tmp_path / "autoattack_state.npz").is_file()
    if page == "docs/testing.md":
        assert "8 devices" in output and "equal per example: True" in output, output
    if left_out:
        pytest.skip(f"the other blocks ran; these need {doc_blocks.DATA_ENV} (unset): {left_out}")


def test_every_skipped_block_exists_once_and_says_why():
    for (page, line), reason in doc_blocks.SKIPPED.items():
        matching = [b for b in doc_blocks.blocks(page) if line in b.code]
        assert len(matching) == 1, (page, line, len(matching))
        assert reason.strip(), (page, line)


def test_pages_run_elsewhere_name_an_existing_test():
    for page, test in doc_blocks.RUN_ELSEWHERE.items():
        assert (ROOT / page).is_file() and (ROOT / test).is_file(), (page, test)
        assert page.rsplit("/", 1)[-1] in (ROOT / test).read_text(), (page, test)


def test_every_page_has_its_blocks_found():
    """The extraction sees every fence, whatever its language (a miscount would leave blocks
    untested): the number of fence lines is twice the number of blocks."""
    for page in doc_blocks.doc_files():
        text = (ROOT / page).read_text()
        fences = len(re.findall(r"^\s*(```|~~~)", text, re.M))
        assert fences == 2 * len(doc_blocks.blocks(page)), page


@pytest.mark.parametrize(("command", "problem"), [
    ("advjax run quickstart --config quick", None),
    ("advjax run no_such_study", "no study"),
    ("advjax run quickstart --config nope", "nope"),
    ("advjax run quickstart --set no_such_field=1", "no_such_field"),
    ("advjax run quickstart --no-such-option", "refused by advjax.cli.build_parser"),
    ("advjax evaluate woods2019-resnet44-standard --n 4", None),
    ("advjax evaluate Carmon2019Unlabeled --checkpoint c.pt", None),
    ("advjax evaluate my_defence:ensemble --data mnist-test", None),
    ("advjax evaluate NoSuchModel2099", "no zoo checkpoint"),
    ('python -m pip install -e ".[docs,test]"', None),
    ('python -m pip install -e ".[nonexistent]"', "nonexistent"),
    ('python -m pytest -n 2 -m "not slow" tests/test_readme.py::test_ci_runs_the_readme', None),
    ("python -m pytest tests/no_such_file.py", "does not exist"),
    ("ruff check . advjax", None),
    ("srun --nodes=2 advjax run no_such_study", "no study"),
    ('gcloud x --command="cd advjax && advjax run woods_ara --config nope"', "nope"),
    ("rm -rf results", "not known"),
])
def test_shell_commands_are_checked(command, problem):
    runs: list = []
    (words,) = doc_blocks.shell_commands(command)  # quoted `&&` stays inside --command=
    found = doc_blocks.check_command(words, runs)
    if problem is None:
        assert found == [], found
    else:
        assert len(found) == 1 and problem in found[0], found


def _docstring_options() -> dict:
    """The `docstring_options` mkdocs.yml gives mkdocstrings (read from the file, not copied)."""
    import yaml

    # mkdocs.yml holds !!python/name tags elsewhere; only the plugin's options are read here
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    (plugin,) = [p for p in config["plugins"] if isinstance(p, dict) and "mkdocstrings" in p]
    options = plugin["mkdocstrings"]["handlers"]["python"]["options"]
    return {k: {"true": True, "false": False}.get(v, v)
            for k, v in options["docstring_options"].items()}


def _returned_values(annotation) -> int:
    """How many values a function returns: the length of a fixed ``tuple[...]``, else one."""
    text = str(annotation or "")
    match = re.fullmatch(r"tuple\[(.*)\]", text)
    if not match or "..." in text:
        return 1
    depth, count = 0, 1
    for ch in match.group(1):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == "," and depth == 0:
            count += 1
    return count


def test_every_returns_section_has_one_row_per_returned_value():
    """Parses every advjax docstring the way mkdocstrings does (the options of mkdocs.yml and the
    docs/griffe_roles.py extension): a Returns section must not render more table rows than the
    function returns values (a description continued over several lines is one row)."""
    import griffe

    options = _docstring_options()
    pkg = griffe.load("advjax", search_paths=[str(ROOT)], docstring_parser="google",
                      docstring_options=options, resolve_aliases=False,
                      extensions=griffe.load_extensions(str(ROOT / "docs" / "griffe_roles.py")))
    seen: set[str] = set()
    sections, split = 0, []

    def walk(node) -> None:
        nonlocal sections
        for member in list(node.members.values()):
            if member.is_alias or member.path in seen:
                continue
            seen.add(member.path)
            if member.is_module or member.is_class:
                walk(member)
            elif member.is_function and member.docstring is not None:
                for section in member.docstring.parsed:
                    if section.kind is griffe.DocstringSectionKind.returns:
                        sections += 1
                        if len(section.value) > _returned_values(member.returns):
                            split.append(f"{member.path}: {len(section.value)} rows")

    walk(pkg)
    assert sections > 100, sections  # the walk saw the package (159 Returns sections in 12.2026)
    assert not split, split


def test_a_block_that_does_not_run_fails_the_page(tmp_path, monkeypatch):
    """A new block that does not run, or that the test cannot run, fails: nothing is skipped
    silently; a block marked as needing the data is left out, by name, where it is unset."""
    page = tmp_path / "page.md"
    work = tmp_path / "work"
    work.mkdir()
    good = "```python\nx = 1\n```\n\n<!-- test: needs ADVJAX_DATA_DIR -->\n```py\nx = 2\n```\n"
    page.write_text(good + "\n```py\nprint(x + undefined_name)\n```\n")
    with pytest.raises(AssertionError, match=r"(?s)block 2.*NameError: name 'undefined_name'"):
        doc_blocks.run_file(str(page), work)
    page.write_text(good + "\n```text\nsome output\n```\n")
    with pytest.raises(AssertionError, match="neither Python nor shell"):
        doc_blocks.run_file(str(page), work)
    page.write_text(good + "\n```console\n$ advjax run no_such_study\n```\n")
    with pytest.raises(AssertionError, match="no study 'no_such_study'"):
        doc_blocks.run_file(str(page), work)
    page.write_text(good + "\n<!-- test: skip please -->\n```python\nx = 3\n```\n")
    with pytest.raises(AssertionError, match="unknown test directive"):
        doc_blocks.run_file(str(page), work)
    monkeypatch.delenv(doc_blocks.DATA_ENV, raising=False)
    page.write_text(good + "\n```pycon\n>>> print(x * 10)\n10\n```\n")
    output, left_out = doc_blocks.run_file(str(page), work)
    assert left_out == [f"{page}:6 (block 1, ```py)"]
    assert output.splitlines()[-2:] == ["10", "=== ALL BLOCKS RAN"]
