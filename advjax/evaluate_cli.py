"""``advjax evaluate``: the AutoAttack evaluation of one model, written as a results folder.

The model is one of

* a RobustBench name with its checkpoint file(s): ``advjax evaluate Carmon2019Unlabeled
  --checkpoint FILE`` (``--dataset`` / ``--threat-model`` pick the leaderboard; see
  :mod:`advjax.models.robustbench_registry`);
* a checkpoint of the zoo under ``ADVJAX_DATA_DIR`` (:func:`zoo`), e.g.
  ``woods2019-resnet44-standard`` or ``advertorch-lenet5-advtrained``;
* ``package.module:function``: a Python function that takes no argument and returns a
  per-example ``logits_fn(x) -> (K,)`` (``logits_fn(x, key)`` for ``--version rand``); modules
  of the current folder are importable.

It is evaluated on the first ``--n`` examples of ``--data`` with
:func:`advjax.attacks.evaluate` and the folder obeys :func:`advjax.pipeline.execute`'s rules:
every argument, file and data set is checked and fingerprinted before anything is written; the
run lives in ``OUT/state/<fingerprint>/`` (the evaluation's own resumable state file included)
until it finishes; the same command reuses a finished evaluation (``reused``) and resumes an
interrupted one after its last finished AutoAttack stage, another config in the same folder is
refused; with many ``jax.distributed`` processes process 0 writes, and decides what is resumed
(its state is sent to the others, which need not share its file system).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import importlib
import inspect
import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

VERSIONS = ("standard", "plus", "rand", "adaptive", "custom")
# --data aliases named after the folders of ADVJAX_DATA_DIR: (advjax.data name, split).
DATA_ALIASES = {"mnist-test": ("mnist_local", "all"), "cifar10-test-head": ("cifar10_head", "all")}


@dataclasses.dataclass(frozen=True)
class ZooCheckpoint:
    """A checkpoint of ``ADVJAX_DATA_DIR`` that ``advjax evaluate`` builds by name.

    Attributes:
      folder, file: where it lies under the data folder.
      loader: ``"woods2019"`` (:func:`advjax.models.load_woods2019`) or ``"lenet5"``
        (:func:`advjax.models.load_lenet5`, with ``variant``).
      variant: the LeNet5 variant.
      data: the default ``--data``.
      published: published numbers (``clean``; ``robust`` with the attack that measured it).
    """

    folder: str
    file: str
    loader: str
    variant: str | None
    data: str
    published: dict


@functools.cache
def zoo() -> dict[str, ZooCheckpoint]:
    """The zoo's checkpoints by name: ``woods2019-resnet44-{standard,adv-train,all,robust}``
    (:data:`advjax.models.WOODS2019_CHECKPOINTS`) and ``advertorch-lenet5-{clntrained,advtrained}``.
    """
    from advjax.models import WOODS2019_CHECKPOINTS

    out = {}
    for file, numbers in WOODS2019_CHECKPOINTS.items():
        out["woods2019-" + file.removesuffix(".pt")] = ZooCheckpoint(
            "woods2019-resnet44", file, "woods2019", None, "cifar10-test-head",
            {"clean": numbers["test_acc"], "source": "Woods et al. 2019, 1,000 test images"})
    # advertorch's README: full MNIST test set; L∞ PGD eps 0.3, 40 steps, no random start.
    for variant, clean, robust in (("clntrained", 0.9889, 0.0), ("advtrained", 0.9864, 0.932)):
        out[f"advertorch-lenet5-{variant}"] = ZooCheckpoint(
            "advertorch-lenet5", "lenet5_mnist.npz", "lenet5", variant, "mnist-test",
            {"clean": clean, "robust": robust, "robust_eps": 0.3,
             "robust_attack": "PGD-40 (advertorch)", "source": "advertorch, MNIST test set"})
    return out


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``evaluate`` on the ``advjax`` command's subparsers."""
    p = sub.add_parser("evaluate", help="AutoAttack evaluation of one model into a results folder",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # No advjax.models import here: building the parser must stay fast for `advjax list`.
    p.add_argument("model", help="RobustBench name, zoo checkpoint name (woods2019-resnet44-"
                                 "{standard,adv-train,all,robust}, advertorch-lenet5-"
                                 "{clntrained,advtrained}) or package.module:function")
    p.add_argument("--checkpoint", action="append", default=[], metavar="FILE",
                   help="checkpoint file of a RobustBench model (repeat for an ensemble)")
    p.add_argument("--dataset", default="cifar10",
                   help="RobustBench dataset: cifar10, cifar100 or imagenet")
    p.add_argument("--threat-model", default=None,
                   help="RobustBench threat model: Linf, L2 or corruptions (default: from --norm)")
    p.add_argument("--data", default=None,
                   help="data set to attack: mnist-test, cifar10-test-head, or an advjax.data / "
                        "TFDS name with an optional :SPLIT (default split test); default: the "
                        "model's")
    p.add_argument("--n", type=int, default=None, help="first N examples (default 1000)")
    p.add_argument("--eps", default=None,
                   help="budget, a number or a fraction such as 8/255 (default: the published one)")
    p.add_argument("--norm", default="linf", choices=("linf", "l2"))
    p.add_argument("--version", default="standard",
                   help=f"one of {VERSIONS}; adaptive: AutoAttack standard, then a transfer stage "
                        "from --surrogate and more Square restarts when a gradient-masking check "
                        "trips")
    p.add_argument("--surrogate", default=None, metavar="MODEL",
                   help="a model (zoo name or package.module:function) the transfer stage "
                        "attacks; its points are verified on MODEL")
    p.add_argument("--attacks", default=None,
                   help="comma-separated stages for --version custom, e.g. apgd-ce,apgd-t")
    p.add_argument("--steps", type=int, default=None, help="APGD/FAB iterations (default 100)")
    p.add_argument("--queries", type=int, default=None, help="Square queries (default 5000)")
    p.add_argument("--n-targets", type=int, default=None, help="targeted classes (default 9)")
    p.add_argument("--restarts", type=int, default=None, help="APGD-CE/DLR restarts")
    p.add_argument("--seed", type=int, default=0, help="base key of the per-example keys")
    p.add_argument("--batch-size", type=int, default=256,
                   help="rows per compiled call (does not change the results)")
    p.add_argument("--out", default=None, help="results folder (default results/evaluate/MODEL)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="insist on continuing the run of this exact config in --out")
    mode.add_argument("--overwrite", action="store_true",
                      help="replace a run of another config in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


# ----------------------------------------------------------------------------- resolution


@dataclasses.dataclass
class Model:
    """A resolved ``MODEL`` argument."""

    kind: str  # "robustbench", "zoo" or "function"
    description: str
    logits_fn: Callable
    files: dict[str, str]  # label -> SHA-256 (full hex)
    published: dict | None
    default_data: str | None
    default_eps: float | None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_function_spec(spec: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", spec) is not None


def resolve_model(spec: str, checkpoints: Sequence[str], dataset: str,
                  threat_model: str) -> Model:
    """Builds the model named by ``spec`` (checks files; raises ValueError / FileNotFoundError)."""
    if spec in zoo():
        if checkpoints:
            raise ValueError(f"--checkpoint: {spec!r} is a zoo checkpoint read from "
                             "ADVJAX_DATA_DIR; --checkpoint is for RobustBench models")
        return _zoo_model(spec, zoo()[spec])
    if _is_function_spec(spec):
        if checkpoints:
            raise ValueError("--checkpoint is for RobustBench models; a module:function loads "
                             "its own weights")
        return _function_model(spec)
    from advjax.models import robustbench_registry as reg

    entry = reg.lookup(spec, dataset, threat_model)
    if not checkpoints:
        raise ValueError(f"--checkpoint: {entry.key} needs its checkpoint file(s) "
                         f"({entry.num_checkpoints}); download them from RobustBench")
    logits_fn, info = reg.load_robustbench(spec, entry.dataset, entry.threat_model,
                                           path=checkpoints)
    published = {"clean": entry.clean_acc, "robust": entry.autoattack_acc,
                 "robust_eps": entry.eps_value, "robust_attack": "AutoAttack standard",
                 "source": f"RobustBench {reg.registry_source()['commit'][:10]}"}
    files = {Path(c).name: s for c, s in zip(checkpoints, info["sha256"], strict=True)}
    data = {"cifar10": "cifar10-test-head"}.get(entry.dataset, f"{entry.dataset}:test")
    return Model("robustbench", f"{entry.key} ({entry.arch})", logits_fn, files, published,
                 data, entry.eps_value)


def _zoo_model(name: str, ckpt: ZooCheckpoint) -> Model:
    from advjax import data as data_lib
    from advjax import models

    path = data_lib.resolve_data_dir(None) / ckpt.folder / ckpt.file
    if not path.is_file():
        raise FileNotFoundError(f"{name}: {path} not found (the zoo's checkpoints lie under "
                                f"{data_lib.DATA_ENV})")
    if ckpt.loader == "woods2019":
        module, variables = models.load_woods2019(path)
        logits_fn = models.linen_logits_fn(module, variables, train=False)
    else:
        module, variables = models.load_lenet5(path, ckpt.variant)
        logits_fn = models.linen_logits_fn(module, variables)
    return Model("zoo", name, logits_fn, {ckpt.file: _sha256(path)}, ckpt.published,
                 ckpt.data, None)


def _function_model(spec: str) -> Model:
    module_name, fn_name = spec.split(":")
    # As ``python -m`` does: a module in the current folder is importable (the console script's
    # own folder is on the path instead).
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"MODEL {spec!r}: cannot import {module_name!r} ({err})") from None
    factory = getattr(module, fn_name, None)
    if not callable(factory):
        raise ValueError(f"MODEL {spec!r}: {module_name} has no function {fn_name!r}")
    logits_fn = factory()
    if not callable(logits_fn):
        raise TypeError(f"MODEL {spec!r}: {fn_name}() must return a per-example logits_fn; got "
                        f"{type(logits_fn).__name__}")
    source = inspect.getsourcefile(module)
    files = {Path(source).name: _sha256(Path(source))} if source else {}
    return Model("function", spec, logits_fn, files, None, None, None)


def resolve_data(text: str) -> tuple[str, str]:
    """``--data`` -> ``(advjax.data name, split)``."""
    if text in DATA_ALIASES:
        return DATA_ALIASES[text]
    name, _, split = text.partition(":")
    return name, split or "test"


# ----------------------------------------------------------------------------- the command


@dataclasses.dataclass
class Plan:
    """Everything checked before writing: the model, the examples, the config and the record."""

    model: Model
    xs: Any
    labels: Any
    config: dict
    evaluator: Any
    out: Path
    record: dict


def version_needs_no_surrogate(args: argparse.Namespace) -> bool:
    """True when no stage of the run would attack ``--surrogate``."""
    if args.version == "custom":
        return "transfer" not in (args.attacks or "")
    return args.version != "adaptive"


def _positive(value: int | None, flag: str) -> None:
    if value is not None and (isinstance(value, bool) or value < 1):
        raise ValueError(f"{flag} must be a positive integer; got {value}")


def plan(args: argparse.Namespace, command: str) -> Plan:
    """Checks every argument, builds the model, loads the data and fingerprints the run.

    Writes nothing. Raises ValueError / TypeError / FileNotFoundError naming the argument.
    """
    import numpy as np

    from advjax import data as data_lib
    from advjax import io, pipeline
    from advjax.attacks.evaluate import AutoAttackEvaluator
    from advjax.models.robustbench_registry import parse_eps

    if args.version not in VERSIONS:
        raise ValueError(f"--version must be one of {list(VERSIONS)}; got {args.version!r}")
    attacks = None
    if args.version == "custom":
        if not args.attacks:
            raise ValueError("--version custom needs --attacks, e.g. --attacks apgd-ce,apgd-t")
        attacks = tuple(a.strip() for a in args.attacks.split(",") if a.strip())
    elif args.attacks:
        raise ValueError(f"--attacks is for --version custom; --version {args.version} runs "
                         "its published stages")
    for flag in ("n", "steps", "queries", "n_targets", "restarts", "batch_size"):
        _positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    threat = args.threat_model or {"linf": "Linf", "l2": "L2"}[args.norm]
    model = resolve_model(args.model, args.checkpoint, args.dataset, threat)
    surrogate = (None if args.surrogate is None else
                 resolve_model(args.surrogate, [], args.dataset, threat))
    if surrogate is not None and version_needs_no_surrogate(args):
        raise ValueError("--surrogate is attacked by the transfer stage: use it with --version "
                         "adaptive or --version custom --attacks ...,transfer")
    if args.eps is None and model.default_eps is None:
        raise ValueError(f"--eps: {args.model!r} has no published budget; give one, e.g. "
                         "--eps 8/255")
    eps = parse_eps(args.eps) if args.eps is not None else model.default_eps
    if not eps > 0 or not np.isfinite(eps):
        raise ValueError(f"--eps must be a positive finite budget; got {args.eps}")
    data_text = args.data or model.default_data
    if data_text is None:
        raise ValueError(f"--data: give the data set to evaluate {args.model!r} on, e.g. "
                         "--data cifar10-test-head")
    name, split = resolve_data(data_text)
    n = args.n or 1000
    ds = data_lib.load(name, split, limit=n)
    if len(ds.labels) < n:
        raise ValueError(f"--n {n}: {data_text} has only {len(ds.labels)} examples")
    settings = {k: v for k, v in (("steps", args.steps), ("queries", args.queries),
                                  ("n_targets", args.n_targets),
                                  ("apgd_restarts", args.restarts)) if v is not None}
    version = "standard" if args.version == "custom" else args.version
    evaluator = AutoAttackEvaluator(
        model.logits_fn, norm=args.norm, version=version, attacks=attacks,
        batch_size=args.batch_size,
        surrogate=None if surrogate is None else surrogate.logits_fn, **settings)
    _check_model_on(evaluator, model, ds.images[0], ds.labels, data_text)
    config = {"model": args.model, "kind": model.kind, "data": data_text, "dataset": name,
              "split": split, "n": n, "eps": eps, "norm": args.norm, "version": args.version,
              "attacks": list(evaluator.stages), "settings": settings, "seed": args.seed,
              "surrogate": args.surrogate}
    if model.kind == "robustbench":
        config.update(robustbench_dataset=args.dataset, threat_model=threat)
    out = Path(args.out) if args.out else Path("results") / "evaluate" / re.sub(
        r"[^A-Za-z0-9_.-]+", "_", args.model)
    inputs = {f"data:{data_text}": io.array_digest(ds.images, ds.labels)[:16]}
    inputs.update({f"file:{k}": v for k, v in model.files.items()})
    if surrogate is not None:
        inputs.update({f"surrogate-file:{k}": v for k, v in surrogate.files.items()})
    record = {"study": "evaluate", "experiment": "evaluate", "config_name": "cli",
              "config": config, "overrides": {}, "inputs": inputs,
              "code": io.code_fingerprint(), "command": command,
              "published": model.published}
    record = json.loads(json.dumps(io._to_jsonable(record)))
    record["fingerprint"] = pipeline.fingerprint(record)
    return Plan(model, ds.images, ds.labels, config, evaluator, out, record)


def _check_model_on(evaluator, model: Model, x0, labels, data_text: str) -> None:
    """The model accepts the data's examples and has as many classes as the labels need."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    try:
        shape = jax.eval_shape(evaluator._det, jnp.asarray(x0)).shape
    except Exception as err:  # noqa: BLE001 - any failure here is a model/data mismatch
        raise ValueError(f"MODEL {model.description} does not accept the examples of "
                         f"{data_text} (shape {tuple(np.shape(x0))}): {err}") from None
    if len(shape) != 1:
        raise ValueError(f"MODEL {model.description}: logits_fn must return (K,) logits for one "
                         f"example; got shape {shape}")
    if int(np.max(labels)) >= shape[0]:
        raise ValueError(f"MODEL {model.description} has {shape[0]} classes; {data_text} has "
                         f"labels up to {int(np.max(labels))}")


STATE_FILE = "autoattack_state.npz"


def _state_path(run) -> Path:
    """The evaluation's state file for this process: ``state/<fingerprint>/autoattack_state.npz``.

    :func:`advjax.attacks.evaluate` reads its state file on every process and writes it on
    process 0. A pod's processes need not share a file system, so, as for the pipeline's stages,
    process 0 decides: it reads its file and sends the bytes to the others, which resume from a
    private copy (outside the results folder; they never write the real one). Every process then
    resumes from the same stages, whether or not it sees process 0's files.
    """
    from advjax import _multiprocess

    path = run.state_dir / STATE_FILE
    if _multiprocess.process_count() == 1:
        return path
    saved = _multiprocess.on_lead(lambda: path.read_bytes() if path.is_file() else None)
    if _multiprocess.is_lead():
        return path
    copy = run._scratch() / STATE_FILE
    if saved is None:
        copy.unlink(missing_ok=True)
    else:
        copy.write_bytes(saved)
    return copy


def _evaluate(p: Plan, run, progress: bool) -> dict:
    import jax
    import numpy as np

    def compute() -> dict:
        # The evaluation's own state file makes an interrupted stage resume after its last
        # finished AutoAttack stage.
        state = _state_path(run)
        ev = p.evaluator(p.xs, p.labels, eps=p.config["eps"], key=jax.random.key(p.config["seed"]),
                         state_path=state, progress=progress)
        return {"clean_accuracy": ev.clean_accuracy, "robust_accuracy": ev.robust_accuracy,
                "stages": list(ev.stages), "seconds": ev.seconds,
                "compile_seconds": ev.compile_seconds, "attacked": ev.attacked,
                "forward_passes": ev.forward_passes, "backward_passes": ev.backward_passes,
                "forward_per_example": ev.forward_per_example,
                "backward_per_example": ev.backward_per_example,
                "passes": np.asarray(ev.passes),
                "num_invalid": ev.num_invalid, "skipped": ev.skipped,
                "broken_beyond_autoattack": ev.broken_beyond_autoattack(),
                "checks": [dataclasses.asdict(c) for c in ev.checks],
                "clean_correct": np.asarray(ev.clean_correct),
                "broken_by": np.asarray(ev.broken_by),
                "x_adv": np.asarray(ev.x_adv), "table": ev.table()}

    result = run.stage("autoattack", compute)
    robust = result["robust_accuracy"]
    final = robust[result["stages"][-1]] if result["stages"] and robust else None
    metrics = {"model": p.config["model"], "n": p.config["n"], "eps": p.config["eps"],
               "norm": p.config["norm"], "version": p.config["version"],
               "clean_accuracy": result["clean_accuracy"], "robust_accuracy": robust,
               "robust_accuracy_final": final, "published": p.model.published,
               "num_invalid": result["num_invalid"], "seconds": result["seconds"],
               "compile_seconds": result["compile_seconds"], "attacked": result["attacked"],
               # model passes per stage (advjax.attacks.passes): totals over the examples the
               # stage attacked and means per attacked example; comparable across hardware
               **{k: result.get(k, {}) for k in ("forward_passes", "backward_passes",
                                                 "forward_per_example",
                                                 "backward_per_example")},
               "checks": result["checks"], "skipped": result["skipped"],
               "broken_beyond_autoattack": result["broken_beyond_autoattack"],
               "per_example": {"label": p.labels.tolist(),
                               "clean_correct": result["clean_correct"].tolist(),
                               "broken_by": result["broken_by"].tolist(),
                               # (n, n_stages, 2): [forward, backward] per example and stage
                               "passes": np.asarray(result.get("passes", [])).tolist()}}
    run.section("Evaluation", f"Model `{p.model.description}`, {p.config['n']} examples of "
                f"`{p.config['data']}`, {p.config['norm']} eps {p.config['eps']:.6g}, "
                f"version `{p.config['version']}`, seed {p.config['seed']}.")
    run.text(result["table"])
    run.section("Measured and published")
    run.text("\n".join(summary_table(metrics)))
    return metrics


def summary_table(metrics: dict) -> list[str]:
    """RobustBench-style lines: clean and robust accuracy after each stage, published beside."""
    pub = metrics.get("published") or {}
    same_eps = pub.get("robust_eps") is not None and abs(pub["robust_eps"] - metrics["eps"]) < 1e-9

    def pct(v):
        return "—" if v is None else f"{100 * v:.2f} %"

    lines = [f"| | measured (n={metrics['n']}) | published |", "|---|---|---|",
             f"| clean | {pct(metrics['clean_accuracy'])} | {pct(pub.get('clean'))} |"]
    stages = list(metrics["robust_accuracy"])
    for i, s in enumerate(stages):
        shown = None
        if i == len(stages) - 1 and same_eps:
            shown = f"{pct(pub.get('robust'))} ({pub.get('robust_attack')})"
        lines.append(f"| robust after {s} | {pct(metrics['robust_accuracy'][s])} | "
                     f"{shown or '—'} |")
    if pub.get("robust") is not None and not same_eps:
        lines.append(f"| published robust at eps {pub.get('robust_eps')} | — | "
                     f"{pct(pub['robust'])} ({pub.get('robust_attack')}) |")
    return lines


def _default_command(argv: Sequence[str]) -> str:
    return shlex.join(["advjax", *argv])


def main(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Runs ``advjax evaluate`` (parsed ``args``, raw ``argv`` for the record); exit status."""
    from advjax import cli, parallel, pipeline

    try:
        parallel.initialize_distributed()
    except ValueError as err:
        print(f"advjax: error: {err}", file=sys.stderr)
        return cli.EXIT_ERROR
    stages: list = []
    try:
        p = plan(args, _default_command(argv))
        metrics = pipeline.execute_record(
            p.out, p.record, lambda run: _evaluate(p, run, not args.no_progress),
            title=f"AutoAttack evaluation of {p.model.description}", resume=args.resume,
            overwrite=args.overwrite, progress=not args.no_progress, stages=stages)
    except KeyboardInterrupt:
        print("\nadvjax: interrupted; the same command resumes after the last finished "
              "AutoAttack stage.", file=sys.stderr)
        return cli.EXIT_INTERRUPTED
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"advjax: error{cli._where()}: {err}", file=sys.stderr)
        return cli.EXIT_ERROR
    except Exception as err:  # noqa: BLE001 - a multi-process run must not hang the others
        if cli._process_count() == 1:
            raise
        import traceback

        traceback.print_exc()
        print(f"advjax: error{cli._where()}: {type(err).__name__}: {err}", file=sys.stderr)
        return cli.EXIT_FAILED
    if cli._process_count() > 1 and not cli._lead():
        print(f"advjax: process {cli._index()} of {cli._process_count()} finished; process 0 "
              f"wrote the results to {p.out}")
        return 0
    print(f"{p.model.description}: {p.config['n']} examples of {p.config['data']}, "
          f"{p.config['norm']} eps {p.config['eps']:.6g}, version {p.config['version']}")
    print("\n".join(summary_table(metrics)))
    for s in metrics["stages"]:
        print(f"stage {s['name']:12s} {'reused' if s['cached'] else 'computed':9s} "
              f"{s['seconds']:8.1f} s")
    print(f"results written to {p.out}")
    return 0

