"""Every fenced code block of README.md and docs/**/*.md, and how the tests check it.

A block is found whatever its fence (```python, ```py, ```pycon, ```bash, ```console, none, ...).
Python blocks of one file run in order in one namespace, in a fresh process whose working directory
is a temporary folder (so a block may rely on the blocks above it, the way a reader pastes them).
Shell blocks are checked command by command: ``advjax list`` runs; every other ``advjax`` command
line is parsed by ``advjax.cli.build_parser`` and its study, config and ``--set`` overrides are
resolved; ``pip install -e ".[x]"`` names extras of pyproject.toml; ``pytest`` / ``ruff`` name
paths that exist; a launcher (``srun``, ``gcloud ... --command=``) is not run but the ``advjax``
command it starts is checked. A command the checker does not know fails the test.

A visible HTML comment on the line(s) before a block adapts how it is tested:

* ``<!-- test: needs ADVJAX_DATA_DIR -->``: the block reads the real data folder; where
  ``ADVJAX_DATA_DIR`` is unset it is left out and the test skips, naming it, after running the
  others.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DATA_ENV = "ADVJAX_DATA_DIR"

PYTHON = {"python", "py", "python3", "pycon"}
SHELL = {"bash", "sh", "shell", "console", "zsh"}
DIRECTIVE = re.compile(r"<!--\s*test:\s*(.*?)\s*-->")
KNOWN_DIRECTIVES = {"needs ADVJAX_DATA_DIR"}
PYTEST_VALUED = {"-m", "-k", "-n", "-p", "--maxfail", "--durations"}
FENCE = re.compile(r"^([ \t]*)(`{3,}|~{3,})[ \t]*([^\s`]*)[^\n`]*$")


@dataclass
class Block:
    path: str  # relative to the repository root
    index: int  # position among the file's blocks (0-based)
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    directives: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        if self.lang in PYTHON:
            return "python"
        if self.lang in SHELL:
            return "shell"
        return "other"

    @property
    def needs_data(self) -> bool:
        return "needs ADVJAX_DATA_DIR" in self.directives

    def __str__(self) -> str:
        return f"{self.path}:{self.line} (block {self.index}, ```{self.lang})"


# Pages whose blocks another test runs as a whole (its own files, its own skip markers).
RUN_ELSEWHERE = {
    "docs/evaluate_published.md": "tests/test_docs_evaluate.py",
}


def doc_files() -> list[str]:
    """README.md and every Markdown page under docs/ (the notebooks are tested on their own, the
    pages of :data:`RUN_ELSEWHERE` by the test named there)."""
    pages = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md")
                   if "notebooks" not in p.relative_to(ROOT / "docs").parts)
    return ["README.md", *[p for p in pages if p not in RUN_ELSEWHERE]]


def blocks(path: str) -> list[Block]:
    """The fenced blocks of one file, in order, with the ``<!-- test: ... -->`` lines above."""
    lines = (ROOT / path).read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, lang = match.groups()
        end = i + 1
        while end < len(lines) and not (lines[end].strip().startswith(fence)
                                         and lines[end].strip().strip(fence[0]) == ""):
            end += 1
        if end == len(lines):
            raise ValueError(f"{path}:{i + 1}: unclosed code fence")
        body = [line[len(indent):] if line.startswith(indent) else line
                for line in lines[i + 1:end]]
        directives, j = [], i - 1
        while j >= 0 and (not lines[j].strip() or DIRECTIVE.fullmatch(lines[j].strip())):
            if lines[j].strip():
                directives.append(DIRECTIVE.fullmatch(lines[j].strip()).group(1))
            j -= 1
        found.append(Block(path, len(found), i + 1, lang.lower(), "\n".join(body) + "\n",
                           directives))
        i = end + 1
    return found


def python_source(block: Block) -> str:
    """A block's Python code; a ``pycon`` session keeps its ``>>>`` / ``...`` lines only."""
    if block.lang != "pycon":
        return block.code
    kept = [line[4:] for line in block.code.splitlines() if line.startswith((">>> ", "... "))]
    kept += [""] if not kept else []
    return "\n".join(kept) + "\n"


# The runner executed in a subprocess: the blocks of one file, in order, in one namespace.
RUNNER = """\
import json, sys, time, traceback
blocks = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for name, code in blocks:
    print(f"=== {name}", flush=True)
    start = time.perf_counter()
    try:
        exec(compile(code, name, "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"=== FAILED {name}", flush=True)
        sys.exit(1)
    print(f"=== {time.perf_counter() - start:.1f} s: {name}", file=sys.stderr, flush=True)
print("=== ALL BLOCKS RAN", flush=True)
"""


# ---------------------------------------------------------------------------------------------
# Shell blocks

def shell_commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block: continuations joined, comments dropped, split at
    ``&&``, ``||``, ``;``, ``|``, ``&``; a leading ``$ `` prompt removed; output lines of a
    ``console`` block (no prompt) are not commands there, see ``console_commands``."""
    text = code.replace("\\\n", " ")
    commands: list[list[str]] = []
    for line in text.splitlines():
        lexer = shlex.shlex(line.removeprefix("$ "), posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for token in lexer:
            if token in {"&&", "||", ";", "|", "&"}:
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
        if current:
            commands.append(current)
    return commands


def console_commands(code: str) -> list[list[str]]:
    """The commands of a ``console`` block: the lines with a ``$ `` prompt."""
    return shell_commands("\n".join(line for line in code.splitlines() if line.startswith("$ ")))


def _extras() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project.get("optional-dependencies", {}))


def _check_paths(args: list[str], what: str) -> list[str]:
    missing = [a for a in args if not a.startswith("-") and not (ROOT / a).exists()]
    return [f"{what}: {m!r} does not exist in the repository" for m in missing]


def check_advjax(args: list[str], runs: list[list[str]]) -> list[str]:
    """Parse an ``advjax`` command line; resolve its study, config and overrides."""
    from advjax import cli, pipeline

    try:
        parsed = cli.build_parser().parse_args(args)
    except SystemExit:
        return [f"`advjax {shlex.join(args)}` is refused by advjax.cli.build_parser"]
    if parsed.command == "list":
        runs.append(["list"])
        return []
    if parsed.command == "evaluate":
        return _check_evaluate(parsed, args)
    if parsed.experiment not in pipeline.list_experiments():
        return [f"`advjax {shlex.join(args)}`: no study {parsed.experiment!r}"]
    module = pipeline.load_experiment(parsed.experiment)
    overrides = dict(getattr(parsed, "overrides", []) or [])
    try:
        pipeline.resolve_config(module, parsed.config, overrides, raw=True)
    except (ValueError, TypeError, KeyError) as err:
        return [f"`advjax {shlex.join(args)}`: {err}"]
    return []


def _check_evaluate(parsed, args: list[str]) -> list[str]:
    """``advjax evaluate``: the model is a zoo checkpoint, a registry name or module:function."""
    from advjax import evaluate_cli
    from advjax.models import robustbench_registry

    spec = parsed.model
    names = {m.name for m in robustbench_registry.list_models()}
    if not (spec in evaluate_cli.zoo() or spec in names or evaluate_cli._is_function_spec(spec)):
        return [f"`advjax {shlex.join(args)}`: {spec!r} is no zoo checkpoint, registry name "
                "or module:function"]
    return []


def check_command(words: list[str], runs: list[list[str]]) -> list[str]:
    """Problems with one simple command (empty: fine); ``advjax list`` is queued in ``runs``."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words = words[1:]  # VAR=value prefixes
    if not words:
        return []
    program, args = words[0], words[1:]
    if program == "export":
        bad = [a for a in args if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", a)]
        return [f"`export {a}` is not an assignment" for a in bad]
    if program in {"wait", "cd"}:
        return []
    if program == "advjax":
        return check_advjax(args, runs)
    if program in {"python", "python3"} and args[:1] == ["-m"]:
        module, rest = args[1], args[2:]
        if module == "pip":
            if rest[:2] != ["install", "-e"] or len(rest) != 3:
                return [f"`pip {shlex.join(rest)}`: expected `pip install -e .[extras]`"]
            spec = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", rest[2])
            if spec is None:
                return [f"`pip install -e {rest[2]}`: expected `.` or `.[extras]`"]
            unknown = set(filter(None, (spec.group(1) or "").split(","))) - _extras()
            return [f"pip extra {e!r} is not in pyproject.toml" for e in sorted(unknown)]
        if module == "pytest":
            paths = [a for a, before in zip(rest, [None, *rest], strict=False)
                     if not a.startswith("-") and before not in PYTEST_VALUED]
            return _check_paths([p.split("::")[0] for p in paths], "pytest")
        return [f"`python -m {module}` is not known to tests/doc_blocks.py"]
    if program == "ruff":
        return _check_paths(args[1:], "ruff") if args[:1] == ["check"] else [f"`ruff {args}`"]
    if program == "mkdocs":
        # `mkdocs build --strict` is run by tests/test_docs.py's site build
        return [] if args[:1] in (["build"], ["serve"]) else [f"`mkdocs {shlex.join(args)}`"]
    if program == "srun":
        if "advjax" not in args:
            return ["`srun` starts no advjax command"]
        return check_command(args[args.index("advjax"):], runs)
    if program == "gcloud":
        inner = [a.split("=", 1)[1] for a in args if a.startswith("--command=")]
        if not inner:
            return ["`gcloud` starts no command (no --command=)"]
        return [p for c in shell_commands(inner[0]) for p in check_command(c, runs)]
    return [f"`{shlex.join(words)}`: `{program}` is not known to tests/doc_blocks.py; teach "
            "check_command how to check it (or run it)"]


# ---------------------------------------------------------------------------------------------
# Blocks not run here, each with the reason: (file, a line of the block) -> reason.
SKIPPED = {
    ("docs/distributed.md", "every = parallel.gather(mine)"):
        "run by tests/distributed/test_docs_page.py (under two processes)",
    ("docs/distributed.md", "export ADVJAX_COORDINATOR_ADDRESS=127.0.0.1:12355"):
        "run by tests/distributed/test_docs_page.py (two processes on one CPU)",
}


def skip_reason(block: Block) -> str | None:
    for (path, line), reason in SKIPPED.items():
        if path == block.path and line in block.code:
            return reason
    return None


def run_file(path: str, workdir: Path, timeout: float = 900) -> tuple[str, list[str]]:
    """Check every block of one file; return the Python blocks' output and the blocks left out
    (needing ``ADVJAX_DATA_DIR`` where it is unset). Raises AssertionError naming the block on
    the first failure."""
    import json
    import os
    import subprocess
    import sys

    have_data = bool(os.environ.get(DATA_ENV))
    python, left_out, problems, runs = [], [], [], []
    for block in blocks(path):
        unknown = [d for d in block.directives if d not in KNOWN_DIRECTIVES]
        assert not unknown, f"{block}: unknown test directive(s) {unknown}"
        if skip_reason(block) is not None:
            continue
        if block.needs_data and not have_data:
            left_out.append(str(block))
            continue
        if block.kind == "python":
            python.append([str(block), python_source(block)])
        elif block.kind == "shell":
            commands = (console_commands(block.code) if block.lang == "console"
                        else shell_commands(block.code))
            assert commands, f"{block}: a shell block with no command"
            problems += [f"{block}: {p}" for c in commands for p in check_command(c, runs)]
        else:
            problems.append(f"{block}: a ```{block.lang} block is neither Python nor shell; "
                            "give it a language the test runs, or list it in SKIPPED")
    assert not problems, "\n".join(problems)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = []
    for args in runs:  # cheap advjax commands, run for real
        done = subprocess.run([sys.executable, "-c", "import sys; from advjax.cli import main; "
                               "sys.exit(main(sys.argv[1:]))", *args], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{path}: `advjax {shlex.join(args)}` failed:\n{done.stderr}"
        out.append(done.stdout)
    if python:
        script, data = workdir / "run_blocks.py", workdir / "blocks.json"
        script.write_text(RUNNER)
        data.write_text(json.dumps(python))
        done = subprocess.run([sys.executable, str(script), str(data)], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0 and "=== ALL BLOCKS RAN" in done.stdout, (
                f"{path}: a block failed\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
        out.append(done.stdout)
        sys.stderr.write(done.stderr[-2000:])  # the per-block times (pytest shows them with -s)
    return "\n".join(out), left_out


def printed_by(output: str, block: Block) -> str:
    """What one Python block printed, from ``run_file``'s output."""
    start = output.index(f"=== {block}\n") + len(f"=== {block}\n")
    end = output.find("\n=== ", start - 1)
    return output[start:end if end >= 0 else None]
