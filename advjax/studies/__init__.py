"""Experiment scripts: one module per study, each with ``CONFIGS`` and ``run(config, run)``.

Run them with ``advjax run NAME --config quick|paper``; see ``experiments/README.md``.
"""
