"""Fixtures of the run-folder and CLI tests."""

from __future__ import annotations

import pytest

from advjax import pipeline

TOY = "tests.experiments.toy_studies"


@pytest.fixture
def toy(monkeypatch, tmp_path):
    """The toy study package in place of advjax.studies; returns the stage log path."""
    monkeypatch.setattr(pipeline, "STUDIES_PACKAGE", TOY)
    log = tmp_path / "log.txt"
    monkeypatch.setenv("ADVJAX_TOY_LOG", str(log))
    return log
