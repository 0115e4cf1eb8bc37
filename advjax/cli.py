"""The ``advjax`` command.

``advjax list``, ``advjax show STUDY [--config NAME]``,
``advjax run STUDY [--config quick|paper] [--out DIR] [--set KEY=VALUE]... [--resume | --overwrite]
[--download]`` and ``advjax evaluate MODEL ...`` (:mod:`advjax.evaluate_cli`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

EXIT_ERROR = 2
EXIT_FAILED = 1  # an unexpected exception in a multi-process run (traceback printed)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention


def _parse_override(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> ``(KEY, VALUE text)``; the text is parsed against the field's type later."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE; got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="advjax", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a study and write its results folder")
    run.add_argument("experiment", help="study name (see `advjax list`)")
    run.add_argument("--config", default="quick",
                     help="config preset: quick (CPU, minutes) or paper")
    run.add_argument("--out", default=None,
                     help="output folder (default results/STUDY/CONFIG)")
    run.add_argument("--set", dest="overrides", action="append", default=[], type=_parse_override,
                     metavar="KEY=VALUE",
                     help="override a config field (see `advjax show STUDY`), repeatable; lists "
                          "as JSON, e.g. --set pgd_eps=[0.5,1.0]")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run of this exact config in --out (skips finished stages)")
    mode.add_argument("--overwrite", action="store_true",
                      help="replace a run of another config in --out")
    run.add_argument("--download", action="store_true",
                     help="download and prepare missing TFDS data (needs internet)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--no-compilation-cache", action="store_true",
                     help="do not use JAX's persistent compilation cache ($ADVJAX_CACHE_DIR or "
                          "~/.cache/advjax/jax; also off with ADVJAX_COMPILATION_CACHE=0)")
    run.add_argument("--verbose", action="store_true", help="log per-epoch metrics and saves")
    sub.add_parser("list", help="list the studies, the data they need and their quick runtime")
    show = sub.add_parser("show", help="list a study's config fields: type, default, meaning")
    show.add_argument("experiment", help="study name")
    show.add_argument("--config", default="quick", help="preset whose values are shown")
    from advjax import evaluate_cli

    evaluate_cli.add_parser(sub)
    return parser


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted key, short text)`` for every scalar of a nested metrics dict; lists summarised."""
    if isinstance(value, Mapping) and {"value", "ci_low", "ci_high"} <= set(value):
        yield prefix, (f"{_short(value['value'])} [{_short(value['ci_low'])}, "
                       f"{_short(value['ci_high'])}] (95% CI, n={value.get('n')})")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, (list, tuple)):
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) \
                and len(value) <= 8:
            yield prefix, "[" + ", ".join(_short(v) for v in value) + "]"
        elif value and all(isinstance(v, Mapping) and "verdict" in v for v in value):
            for i, claim in enumerate(value):
                yield f"{prefix}[{i}]", f"{claim['verdict'].upper()}: {claim['statement']}"
        elif value and all(isinstance(v, Mapping) for v in value):
            yield prefix, f"<{len(value)} records>"
        elif value:
            yield prefix, f"<list of {len(value)}>"
    else:
        yield prefix, _short(value)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return "NaN" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def summary_lines(metrics: Mapping[str, Any]) -> list[str]:
    """The per-stage summary and the metrics (nested ones dotted) the CLI prints after a run."""
    lines = ["stages:"]
    for s in metrics.get("stages", []):
        how = "reused" if s["cached"] else "computed"
        lines.append(f"  {s['name']:48s} {how:9s} {s['seconds']:8.1f} s")
    if metrics.get("figures"):
        lines.append(f"figures: {', '.join(metrics['figures'])}")
    lines.append("metrics:")
    for key, text in _flatten({k: v for k, v in metrics.items()
                               if k not in ("stages", "history", "figures")}):
        lines.append(f"  {key} = {text}")
    return lines


def _list() -> int:
    from advjax import pipeline
    from advjax.studies import _runtimes

    print(f"{'study':30s} {'configs':13s} data needed (quick config)")
    for name in pipeline.list_experiments():
        module = pipeline.load_experiment(name)
        print(f"{name:30s} {', '.join(sorted(module.CONFIGS)):13s} "
              f"{pipeline.describe_inputs(module)}")
        doc = (module.__doc__ or "").strip().splitlines()
        if doc:
            print(f"{'':30s} {doc[0]}")
        print(f"{'':30s} quick runtime: {_runtimes.runtime_text(name)}")
    return 0


def _show(name: str, config_name: str) -> int:
    from advjax import pipeline

    module = pipeline.load_experiment(name)
    config = pipeline.resolve_config(module, config_name)
    doc = (module.__doc__ or "").strip().splitlines()
    print(f"{name} ({doc[0] if doc else ''})")
    print(f"configs: {', '.join(sorted(module.CONFIGS))}; values of `{config_name}`; data: "
          f"{'; '.join(i.describe() for i in pipeline.study_inputs(module, config)) or 'none'}")
    for f in pipeline.config_fields(config):
        default = json.dumps(pipeline.io._to_jsonable(f.default))
        print(f"  {f.name:22s} {f.type:20s} = {default:24s} {f.meaning}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "evaluate":
        from advjax import evaluate_cli

        return evaluate_cli.main(args, argv)
    if args.command == "run":
        # Record the command as a user would type it, whatever script started the run.
        argv = ["run", args.experiment, *argv[argv.index(args.experiment) + 1:]]
    if args.command == "run":
        # Before any other JAX call: a run started as P processes (ADVJAX_* settings, or a
        # TPU/SLURM/Open MPI cluster) joins them here; a plain run does nothing.
        from advjax import parallel

        try:
            parallel.initialize_distributed()
        except ValueError as err:
            print(f"advjax: error: {err}", file=sys.stderr)
            return EXIT_ERROR
        from advjax import compilation_cache

        if not (args.no_compilation_cache or compilation_cache.opted_out()):
            # Before the first compilation: a second run of the same study loads its programs.
            compilation_cache.enable_compilation_cache()
    from advjax import pipeline

    try:
        if args.command == "list":
            return _list()
        if args.command == "show":
            return _show(args.experiment, args.config)
    except (ValueError, TypeError) as err:
        print(f"advjax: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax", "orbax", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    overrides = dict(args.overrides)
    stages: list = []
    command = shlex.join(["advjax", *argv])
    try:
        out, metrics = pipeline.execute(
            args.experiment, args.config, args.out, overrides, resume=args.resume,
            overwrite=args.overwrite, download=args.download, raw=True,
            progress=not args.no_progress, stages=stages, command=command)
    except KeyboardInterrupt:
        done = sum(not s.cached for s in stages)
        print(f"\nadvjax: interrupted; {done} finished stage(s) saved; the same command resumes "
              "after them.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"advjax: error{_where()}: {err}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as err:  # noqa: BLE001 - a multi-process run must not hang the others
        if _process_count() == 1:
            raise
        import traceback

        traceback.print_exc()
        print(f"advjax: error{_where()}: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED
    if _process_count() > 1 and not _lead():
        print(f"advjax: process {_index()} of {_process_count()} finished; process 0 wrote the "
              f"results to {out}")
        return 0
    print("\n".join(summary_lines(metrics)))
    print(f"results written to {out}")
    return 0


def _process_count() -> int:
    if "jax" not in sys.modules:
        return 1
    from advjax import _multiprocess

    return _multiprocess.process_count()


def _index() -> int:
    from advjax import _multiprocess

    return _multiprocess.process_index()


def _lead() -> bool:
    return _index() == 0


def _where() -> str:
    """`` on process i of P`` in a multi-process run, else nothing."""
    count = _process_count()
    return f" on process {_index()} of {count}" if count > 1 else ""


def entry(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: exits with :func:`main`'s status.

    After Ctrl-C the process leaves at once (``os._exit``), once its output is flushed, so that
    no background thread of an accelerator runtime can fail while the interpreter shuts down. A
    process of a multi-process run that fails leaves at once too: a normal exit would wait in
    ``jax.distributed``'s shutdown barrier for the others, which wait for it in their next
    collective; they stop when the coordinator notices it is gone (its heartbeat timeout).
    """
    code = main(argv)
    if code == EXIT_INTERRUPTED or (code != 0 and _process_count() > 1):
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
