"""The ``advjax`` command.

``advjax run EXPERIMENT [--config quick|paper] [--out DIR]`` and ``advjax list``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence


def _parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE; got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="advjax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment and write its results folder")
    run.add_argument("experiment", help="experiment name (see `advjax list`)")
    run.add_argument("--config", default="quick",
                     help="config preset: quick (CPU, minutes) or paper")
    run.add_argument("--out", default=None,
                     help="output folder (default results/EXPERIMENT/CONFIG)")
    run.add_argument("--set", dest="overrides", action="append", default=[], type=_parse_override,
                     metavar="KEY=VALUE", help="override a config field (JSON value), repeatable")
    run.add_argument("--verbose", action="store_true", help="log per-epoch metrics and saves")
    sub.add_parser("list", help="list the experiments and their configs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from advjax import pipeline

    if args.command == "list":
        for name in pipeline.list_experiments():
            module = pipeline.load_experiment(name)
            doc = (module.__doc__ or "").strip().splitlines()
            print(f"{name:32s} [{', '.join(sorted(module.CONFIGS))}]  {doc[0] if doc else ''}")
        return 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax", "orbax", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        out, metrics = pipeline.execute(args.experiment, args.config, args.out,
                                        dict(args.overrides))
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"advjax: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (list, dict))},
                     indent=2, default=str))
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
