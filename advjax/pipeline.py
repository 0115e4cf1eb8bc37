"""Reproducible study runs: a results folder whose numbers always belong to its config.

A study is a module of :mod:`advjax.studies` that defines

* ``CONFIGS: dict[str, Config]`` — frozen dataclasses, at least ``"quick"`` and ``"paper"``, whose
  docstring has an ``Attributes:`` section (the meaning of every field, shown by ``advjax show``);
* ``run(config, run: Run) -> dict`` — computes and returns the metrics (JSON-able), writing tables
  to ``run.report``, figures to ``run.figure_path(name)`` and wrapping each expensive step in
  ``run.stage(name, fn)``;
* optionally ``inputs(config) -> list[Input]`` (the data and files it reads).

The config dataclass validates itself (``__post_init__``, see
:func:`advjax.studies.common.check_config`), so an invalid ``--set`` value is refused before
anything is written. Each study's quick runtime is recorded once, in
``advjax/studies/runtimes.json`` (:mod:`advjax.studies._runtimes`).

:func:`execute` resolves and type-checks the config, checks every input and fingerprints it (data
content, imported files, code version) **before writing anything**, then runs the study into
``OUT/state/<fingerprint>/`` (cached stage results, training checkpoints) and, only when the study
finished, writes the record: ``config.json`` (config, fingerprint, inputs, exact command),
``versions.json``, ``metrics.json``, ``report.md`` and ``figures/``.

A folder holding another config's run is refused with the changed fields named (``overwrite=True``
replaces it); the same config resumes, skipping finished stages, and a finished run of the same
config is left as it is (nothing runs; its recorded metrics are returned, every stage reused).

Started as P processes joined by ``jax.distributed`` (the same command on every process, as on a
pod; call :func:`advjax.parallel.initialize_distributed` first, as the ``advjax`` command does),
a run gives the same record as on one process: process 0 checks the folder and writes every file
(the record, cached stages, figures); whether a stage is reused, and its saved result, are sent
from process 0 to the others, so that every process runs the same computations. Training
checkpoints are written by all processes together (Orbax), into the same folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import pickle
import pkgutil
import re
import shlex
import shutil
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from advjax import _multiprocess, io

logger = logging.getLogger(__name__)

STUDIES_PACKAGE = "advjax.studies"
STATE_DIR = "state"
RECORD_FILES = ("config.json", "versions.json", "metrics.json", "report.md")
RECORD_DIRS = ("figures",)
LEGACY_DIRS = ("checkpoints",)  # written by earlier versions beside the record


class RunFolderError(ValueError):
    """The output folder holds a different run (or something else) and was left untouched."""


# ----------------------------------------------------------------------------- inputs


@dataclasses.dataclass(frozen=True)
class Input:
    """Something a study reads, checked and fingerprinted before a run writes anything.

    Attributes:
      kind: ``"dataset"`` (a name for :func:`advjax.data.load`) or ``"files"`` (files under a
        folder of the real-data directory, e.g. imported checkpoints).
      name: the dataset name, or the folder name under the data directory for ``"files"``.
      data_dir: the config's ``data_dir`` (``None``: ``ADVJAX_DATA_DIR`` / TFDS's default).
      files: for ``"files"``, the file names inside the folder.
      required: when ``False`` a missing input is recorded as absent and the study skips it.
    """

    kind: str
    name: str
    data_dir: str | None = None
    files: tuple[str, ...] = ()
    required: bool = True

    def describe(self) -> str:
        """Where this input comes from, in words (for ``advjax list``)."""
        if self.kind == "files":
            where = f"ADVJAX_DATA_DIR/{self.name}/"
        else:
            from advjax import data as data_lib

            source = data_lib.info(self.name).source if self.name in data_lib.list_datasets() \
                else "tfds"
            where = {"sklearn": f"{self.name} (offline, embedded)",
                     "local": f"{self.name} (ADVJAX_DATA_DIR)",
                     "tfds": f"{self.name} (TFDS; --download)"}[source]
        return where + ("" if self.required else " [optional]")


def _sha256_arrays(*arrays) -> str:
    return io.array_digest(*arrays)[:16]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _tfds_fingerprint(name: str, data_dir: str | None, download: bool) -> str:
    import tensorflow_datasets as tfds

    from advjax.data import DataNotFoundError

    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        if not download:
            raise DataNotFoundError(
                f"TFDS dataset {name!r} is not prepared (looked in {builder.data_dir}). Rerun with "
                "--download to download and prepare it (needs internet), or prepare it elsewhere "
                f"with `tfds build {name} --data_dir DIR`, copy DIR here and add "
                "--set data_dir=DIR.")
        builder.download_and_prepare()
    return f"tfds:{name}:{builder.info.version}"


def fingerprint_input(inp: Input, *, download: bool = False) -> str | None:
    """A digest of an input's content (``None``: an optional input that is absent).

    Datasets on disk are loaded and their arrays hashed (so a changed file or split is noticed);
    TFDS datasets are identified by name and version; files by their SHA-256.

    Raises:
      DataNotFoundError / FileNotFoundError: a required input is missing (with how to get it).
    """
    from advjax import data as data_lib

    if inp.kind == "dataset":
        known = inp.name in data_lib.list_datasets()
        if not known or data_lib.info(inp.name).source == "tfds":
            try:
                return _tfds_fingerprint(inp.name, inp.data_dir, download)
            except data_lib.DataNotFoundError:
                if inp.required:
                    raise
                return None
        try:
            ds = data_lib.load(inp.name, "all", data_dir=inp.data_dir)
        except (data_lib.DataNotFoundError, FileNotFoundError):
            if inp.required:
                raise
            return None
        return _sha256_arrays(ds.images, ds.labels)
    if inp.kind == "files":
        try:
            folder = data_lib.resolve_data_dir(inp.data_dir) / inp.name
        except (data_lib.DataNotFoundError, FileNotFoundError):
            if inp.required:
                raise
            return None
        missing = [f for f in inp.files if not (folder / f).is_file()]
        if missing:
            if inp.required:
                raise FileNotFoundError(f"{folder}: missing {missing} (needed by this study)")
            return None
        return _sha256_arrays(*[]) if not inp.files else hashlib.sha256("".join(
            _sha256_file(folder / f) for f in inp.files).encode()).hexdigest()[:16]
    raise ValueError(f"unknown input kind {inp.kind!r}; expected 'dataset' or 'files'")


def study_inputs(module, config) -> list[Input]:
    """The inputs a study declares for ``config`` (none if it declares none)."""
    fn = getattr(module, "inputs", None)
    return list(fn(config)) if fn is not None else []


# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """One config field: name, type (as written), default (the preset's value) and meaning."""

    name: str
    type: str
    default: Any
    meaning: str


def _field_docs(cls) -> dict[str, str]:
    """``Attributes:`` entries of a Google-style class docstring, by name."""
    doc = cls.__doc__ or ""
    match = re.search(r"Attributes:\n(.*?)(?:\n\s*\n[A-Z]|\Z)", doc, re.S)
    if not match:
        return {}
    docs, current, indent = {}, None, None
    for line in match.group(1).splitlines():
        depth = len(line) - len(line.lstrip())
        entry = re.match(r"\s{2,}(\w+):\s*(.*)", line)
        if entry and (indent is None or depth <= indent):
            current, indent = entry.group(1), depth
            docs[current] = entry.group(2).strip()
        elif current is not None and line.strip():
            docs[current] += " " + line.strip()
    return docs


def _type_hints(cls) -> dict[str, Any]:
    import sys

    return typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))


def _type_name(tp) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("NoneType", "None")


def config_fields(config) -> list[FieldInfo]:
    """Every field of a study config with its type, value in ``config`` and documented meaning."""
    hints, docs = _type_hints(type(config)), _field_docs(type(config))
    return [FieldInfo(f.name, _type_name(hints[f.name]), getattr(config, f.name),
                      docs.get(f.name, "")) for f in dataclasses.fields(config)]


def _coerce(tp, value: Any, field: str, raw: bool) -> Any:
    """``value`` as type ``tp`` (parsing ``--set`` text when ``raw``), else a named ValueError."""

    def fail(expected: str, example: str):
        shown = value if raw else repr(value)
        raise ValueError(f"--set {field}={shown}: field {field!r} expects {expected}; "
                         f"e.g. --set {field}={example}")

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args:
            if value is None or (raw and value.strip().lower() in ("null", "none")):
                return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _coerce(options[0], value, field, raw)
        fail(" or ".join(_type_name(a) for a in args), "...")
    if tp is str:
        if raw:
            text = value
            if len(text) >= 2 and text[0] == text[-1] == '"':
                text = json.loads(text)
            return text
        if not isinstance(value, str):
            fail("a string", "text")
        return value
    parsed = value
    if raw:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = {"true": True, "false": False}.get(value.strip().lower(), value)
    if tp is bool:
        if not isinstance(parsed, bool):
            fail("a boolean (true or false)", "true")
        return parsed
    if tp is int:
        if isinstance(parsed, bool) or not isinstance(parsed, int):
            fail("an integer", "3")
        return parsed
    if tp is float:
        if isinstance(parsed, bool) or not isinstance(parsed, (int, float)):
            fail("a number", "0.5")
        return float(parsed)
    if origin is tuple:
        item = args[0] if args else Any
        example = {int: "[1,2]", float: "[0.5,1.0]", str: '["a","b"]'}.get(item, "[...]")
        if not isinstance(parsed, (list, tuple)):
            fail(f"a list of {_type_name(item)}", example)
        if item is Any:
            return tuple(parsed)
        return tuple(_coerce(item, v, f"{field}[{i}]", False) for i, v in enumerate(parsed))
    return parsed


def resolve_config(module, config_name: str, overrides: Mapping[str, Any] | None = None, *,
                   raw: bool = False):
    """The preset ``config_name`` of a study with ``overrides`` applied, each checked against its
    field's type (``raw=True``: the values are ``--set`` text to parse)."""
    if config_name not in module.CONFIGS:
        raise ValueError(f"unknown config {config_name!r} for this study; expected one of "
                         f"{sorted(module.CONFIGS)}")
    config = module.CONFIGS[config_name]
    if overrides:
        fields = {f.name: f for f in dataclasses.fields(config)}
        hints = _type_hints(type(config))
        values = {}
        for key, value in overrides.items():
            if key not in fields:
                raise ValueError(f"unknown config field {key!r}; expected one of {sorted(fields)} "
                                 f"(see `advjax show {module.__name__.rsplit('.', 1)[-1]}`)")
            values[key] = _coerce(hints[key], value, key, raw and isinstance(value, str))
        config = dataclasses.replace(config, **values)
    return config


# ----------------------------------------------------------------------------- studies


def list_experiments() -> list[str]:
    """Names of the studies in :mod:`advjax.studies`."""
    pkg = importlib.import_module(STUDIES_PACKAGE)
    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)
                  if not m.name.startswith("_") and m.name != "common")


def load_experiment(name: str):
    known = list_experiments()
    if name not in known:
        raise ValueError(f"unknown experiment {name!r}; expected one of {known}")
    module = importlib.import_module(f"{STUDIES_PACKAGE}.{name}")
    if not hasattr(module, "CONFIGS") or not hasattr(module, "run"):
        raise TypeError(f"study module {name!r} must define CONFIGS and run(config, run)")
    return module


def command_line(name: str, config_name: str, out_dir: Path | None,
                 overrides: Mapping[str, Any] | None) -> str:
    """The ``advjax run`` command that reproduces a run, every override included."""
    parts = ["advjax", "run", name, "--config", config_name]
    if out_dir is not None:
        parts += ["--out", str(out_dir)]
    for key, value in (overrides or {}).items():
        text = value if isinstance(value, str) else json.dumps(io._to_jsonable(value))
        parts += ["--set", f"{key}={text}"]
    return shlex.join(parts)


# ----------------------------------------------------------------------------- run folder


@dataclasses.dataclass
class StageRecord:
    name: str
    cached: bool
    seconds: float


@dataclasses.dataclass
class Run:
    """The state folder of one run, its growing Markdown report and its stages."""

    name: str
    config_name: str
    out_dir: Path
    state_dir: Path | None = None
    report_lines: list[str] = dataclasses.field(default_factory=list)
    stages: list[StageRecord] = dataclasses.field(default_factory=list)
    progress: bool = True
    figures: list[str] = dataclasses.field(default_factory=list)
    _scratch_dir: Path | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        if self.state_dir is None:
            self.state_dir = self.out_dir

    def section(self, title: str, text: str = "") -> None:
        self.report_lines += [f"## {title}", ""] + ([text, ""] if text else [])

    def text(self, text: str) -> None:
        self.report_lines += [text, ""]

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.report_lines.append(markdown_table(header, rows))
        self.report_lines.append("")

    def figure_path(self, name: str) -> Path:
        """Where to write figure ``name``; it joins the record when the run finishes.

        On processes other than process 0 of a multi-process run, a scratch path outside the
        results folder (their figures are the same and are not kept).
        """
        folder = self.state_dir if _multiprocess.is_lead() else self._scratch()
        path = folder / "figures" / name
        if name not in self.figures:
            self.figures.append(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _scratch(self) -> Path:
        if self._scratch_dir is None:
            import tempfile

            self._scratch_dir = Path(tempfile.mkdtemp(prefix="advjax-process-"))
        return self._scratch_dir

    def figure(self, name: str, caption: str) -> None:
        self.report_lines += [f"![{caption}](figures/{name})", ""]

    @property
    def checkpoint_dir(self) -> Path:
        """Training checkpoints of this run (keyed by the run's fingerprint)."""
        return self.state_dir / "checkpoints"

    def stage(self, name: str, compute: Callable[[], Any], *, cache: bool = True) -> Any:
        """``compute()``, or its saved result when this run (same fingerprint) finished it before.

        The result (a pytree of arrays and Python values; jax arrays are stored as numpy) is
        written atomically under ``state/<fingerprint>/stages/``, so an interrupted run resumes
        after its last finished stage. ``cache=False`` only times and records the stage (for
        steps that keep their own state, such as training with checkpoints).
        """
        safe = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name)
        path = self.state_dir / "stages" / f"{safe}.pkl"
        start = time.time()
        # Process 0 decides and sends its saved result: every process then reuses or computes.
        saved = (_multiprocess.on_lead(lambda: path.read_bytes() if path.is_file() else None)
                 if cache else None)
        if saved is not None:
            result = pickle.loads(saved)  # noqa: S301 - this run's own state folder
            self.stages.append(StageRecord(name, True, time.time() - start))
            logger.info("stage %s: reused", name)
            return result
        result = compute()
        if cache:
            import jax
            import numpy as np

            result = jax.tree.map(lambda v: np.asarray(v) if isinstance(v, jax.Array) else v,
                                  result)
            if _multiprocess.is_lead():
                io.atomic_write_bytes(path, pickle.dumps(result,
                                                         protocol=pickle.HIGHEST_PROTOCOL))
        self.stages.append(StageRecord(name, False, time.time() - start))
        return result


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "NaN"
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


def fingerprint(record: Mapping[str, Any]) -> str:
    """SHA-256 (hex, 16 digits) of a run's identity: study, config, inputs and code."""
    keys = ("study", "config_name", "config", "inputs", "code")
    text = json.dumps({k: io._to_jsonable(record[k]) for k in keys}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {json.dumps(a)} -> {json.dumps(b)}")
    return out


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _folder_runs(out: Path) -> dict[str, dict]:
    """The runs a folder holds, by fingerprint: its finished record and any states."""
    runs = {}
    for state in sorted((out / STATE_DIR).glob("*/run.json")):
        rec = _read_json(state)
        if rec is not None:
            runs[state.parent.name] = rec
    rec = _read_json(out / "config.json")
    if rec is not None:
        runs.setdefault(rec.get("fingerprint") or "<unrecorded>", rec)
    return runs


def check_folder(out: Path, record: Mapping[str, Any], *, resume: bool, overwrite: bool) -> None:
    """Refuses (``RunFolderError``, nothing written) a folder holding another run or other files."""
    fp = record["fingerprint"]
    if not out.exists():
        if resume:
            raise RunFolderError(f"--resume: {out} does not exist; there is no run to resume")
        return
    if not out.is_dir():
        raise RunFolderError(f"--out {out} exists and is not a folder")
    runs = _folder_runs(out)
    entries = [p.name for p in out.iterdir()]
    known = set(RECORD_FILES) | set(RECORD_DIRS) | set(LEGACY_DIRS) | {STATE_DIR}
    foreign = [e for e in entries if e not in known]
    if entries and not runs:
        raise RunFolderError(f"--out {out} is not empty and holds no advjax run "
                             f"({sorted(entries)[:5]}); choose an empty or new folder")
    if foreign:
        raise RunFolderError(f"--out {out} holds files that are not part of a run "
                             f"({sorted(foreign)[:5]}); choose another folder")
    others = {k: v for k, v in runs.items() if k != fp}
    if resume and fp not in runs:
        changed = []
        for rec in others.values():
            changed = _differences({k: rec.get(k) for k in ("config", "inputs", "code")},
                                   {k: record[k] for k in ("config", "inputs", "code")})
            break
        raise RunFolderError(
            f"--resume: {out} holds no run of this config and inputs"
            + (f" (changed: {'; '.join(changed)})" if changed else "")
            + "; --resume only continues the same config. Use a new --out, or --overwrite.")
    if others and not overwrite:
        rec = next(iter(others.values()))
        changed = _differences({k: rec.get(k) for k in ("config", "inputs", "code")},
                               {k: record[k] for k in ("config", "inputs", "code")})
        if not changed:
            changed = ["fingerprint (a run recorded by an earlier advjax version)"]
        raise RunFolderError(
            f"{out} holds a run with a different config or inputs; changed: "
            f"{'; '.join(changed)}. Its numbers would not belong to this config, so nothing "
            f"was run or written. Ways on: a new --out; --overwrite to replace that run; "
            f"(--resume only continues the same config: "
            f"{rec.get('command') or 'the recorded command'}).")


def finished_metrics(out: Path, fp: str) -> dict | None:
    """The metrics of the finished run of fingerprint ``fp`` recorded in ``out``, else ``None``.

    A run is finished when its complete record is there: ``config.json`` naming ``fp``, and
    ``metrics.json``, ``versions.json`` and ``report.md`` (written before ``config.json``).
    """
    record = _read_json(out / "config.json")
    if record is None or record.get("fingerprint") != fp:
        return None
    if not all((out / name).is_file() for name in RECORD_FILES):
        return None
    return _read_json(out / "metrics.json")


def _finish(out: Path, run: Run, record: dict, metrics: dict, versions: dict) -> None:
    """Writes the record of a finished run, replacing any other run's record and state."""
    for name in RECORD_DIRS + LEGACY_DIRS:
        if (out / name).exists():
            shutil.rmtree(out / name)
    for state in (out / STATE_DIR).iterdir():
        if state.name != record["fingerprint"] and state.is_dir():
            shutil.rmtree(state)
    staged = run.state_dir / "figures"
    if staged.is_dir():
        shutil.copytree(staged, out / "figures")
    io.atomic_write_json(out / "versions.json", versions)
    io.atomic_write_json(out / "metrics.json", metrics)
    io.atomic_write_text(out / "report.md", "\n".join(run.report_lines) + "\n")
    io.atomic_write_json(out / "config.json", record)


def prepare(name: str, config_name: str = "quick", out_dir: str | Path | None = None,
            overrides: Mapping[str, Any] | None = None, *, raw: bool = False,
            download: bool = False, command: str | None = None) -> tuple[Any, Any, Path, dict]:
    """Resolves, checks and fingerprints a run without writing anything.

    Returns:
      ``(module, config, out, record)``; ``record`` is what ``config.json`` will hold.
    """
    module = load_experiment(name)
    config = resolve_config(module, config_name, overrides, raw=raw)
    out = Path(out_dir) if out_dir is not None else Path("results") / name / config_name
    inputs = {}
    for inp in study_inputs(module, config):
        inputs[f"{inp.kind}:{inp.name}"] = fingerprint_input(inp, download=download)
    record = {"study": name, "experiment": name, "config_name": config_name, "config": config,
              "overrides": dict(overrides or {}), "inputs": inputs, "code": io.code_fingerprint(),
              "command": command or command_line(
                  name, config_name, Path(out_dir) if out_dir else None, overrides)}
    record = json.loads(json.dumps(io._to_jsonable(record)))
    record["fingerprint"] = fingerprint(record)
    return module, config, out, record


def execute(name: str, config_name: str = "quick", out_dir: str | Path | None = None,
            overrides: Mapping[str, Any] | None = None, *, resume: bool = False,
            overwrite: bool = False, download: bool = False, raw: bool = False,
            progress: bool = True, stages: list | None = None,
            command: str | None = None) -> tuple[Path, dict]:
    """Runs study ``name`` with config ``config_name``; returns (output folder, metrics).

    Args:
      name: a study of ``advjax list``.
      config_name: its preset (``"quick"``, ``"paper"``).
      out_dir: results folder (default ``results/NAME/CONFIG``).
      overrides: config fields to change, each checked against the field's type.
      resume: insist that the folder holds a run of exactly this config to continue.
      overwrite: replace a run of another config in the folder (on success).
      download: let TFDS download missing data.
      raw: the overrides are ``--set`` text to parse.
      progress: show progress bars.
      stages: a list that receives the run's :class:`StageRecord` (also on failure).
      command: the command line to record (default: the ``advjax run`` equivalent).

    Returns:
      ``(out, metrics)``. Nothing is written when the config, the inputs or the folder are
      refused; a failed or interrupted run changes only its own ``state/<fingerprint>/``. When
      ``out`` holds the finished run of this exact config (and not ``overwrite``), nothing runs
      and nothing is written: the recorded metrics are returned with every stage marked reused.
    """
    module, config, out, record = prepare(name, config_name, out_dir, overrides, raw=raw,
                                          download=download, command=command)
    title = (module.__doc__ or name).strip().splitlines()[0]
    metrics = execute_record(out, record, lambda run: module.run(config, run), title=title,
                             resume=resume, overwrite=overwrite, progress=progress,
                             stages=stages)
    return out, metrics


def execute_record(out: Path, record: dict, body: Callable[[Run], Mapping[str, Any]], *,
                   title: str, resume: bool = False, overwrite: bool = False,
                   progress: bool = True, stages: list | None = None) -> dict:
    """Runs ``body(run)`` into ``out`` under the folder rules of :func:`execute`.

    The shared half of :func:`execute`, for commands that are not studies (``advjax evaluate``):
    the caller has checked every argument and input and built ``record`` (the content of
    ``config.json``: at least ``study``, ``config_name``, ``config``, ``inputs``, ``code``,
    ``command`` and ``fingerprint``, see :func:`fingerprint`). Process 0 checks the folder
    (refusing another run's folder unless ``overwrite``), ``body`` runs on every process with a
    :class:`Run` whose stages are cached under ``state/<fingerprint>/``, and process 0 writes the
    record once ``body`` returns.

    Returns:
      ``body``'s metrics with ``wall_time_s`` and ``stages`` added (the same on every process).
    """
    versions = io.versions()
    state = out / STATE_DIR / record["fingerprint"]

    def open_folder() -> dict | None:
        check_folder(out, record, resume=resume, overwrite=overwrite)
        finished = None if overwrite else finished_metrics(out, record["fingerprint"])
        if finished is not None:
            return finished
        state.mkdir(parents=True, exist_ok=True)
        if not (state / "run.json").is_file():
            io.atomic_write_json(state / "run.json", record)
        if (state / "figures").is_dir():
            shutil.rmtree(state / "figures")
        return None

    finished = _multiprocess.on_lead(open_folder)
    if finished is not None:
        # A finished run of this exact config: every stage is reused, nothing runs and the
        # record is left byte for byte as it was; the stages are reported as reused.
        reused = [StageRecord(s["name"], True, 0.0) for s in finished.get("stages", [])]
        if stages is not None:
            stages[:] = reused
        return {**finished, "stages": [dataclasses.asdict(s) for s in reused]}
    run = Run(name=record["study"], config_name=record["config_name"], out_dir=out,
              state_dir=state, progress=progress)
    if stages is not None:
        run.stages = stages
    run.report_lines += [f"# {title}", "",
                         f"Study `{record['study']}`, config `{record['config_name']}`, "
                         f"fingerprint `{record['fingerprint']}`. Command: `{record['command']}`.",
                         ""]
    start = time.time()
    metrics = dict(body(run))
    # The lead's wall time and stage records, so that every process returns the same metrics.
    metrics["wall_time_s"] = round(time.time() - start, 2)
    metrics["stages"] = [dataclasses.asdict(s) for s in run.stages]
    metrics["figures"] = sorted(run.figures)
    metrics = _multiprocess.broadcast_object(metrics)
    run.text(f"Wall time: {metrics['wall_time_s']:.1f} s.")
    _multiprocess.on_lead(lambda: _finish(out, run, record, metrics, versions))
    return metrics


def describe_inputs(module) -> str:
    """The data a study's quick config needs, in words."""
    config = module.CONFIGS.get("quick") or next(iter(module.CONFIGS.values()))
    inputs = study_inputs(module, config)
    return "; ".join(i.describe() for i in inputs) if inputs else "nothing"
