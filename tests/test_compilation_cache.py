"""The persistent compilation cache: a second process loads the first one's programs, and the
CLI switches it on (or not) before compiling anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from advjax import cli, compilation_cache, pipeline

ROOT = Path(__file__).resolve().parents[1]

# One process: a tiny MLP jitted after enable_compilation_cache(tmp); JAX's own monitoring events
# count the compilations that asked the cache, hit it, and missed it.
_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp
from jax import monitoring
import advjax
events = {}
def count(name, **kw):
    events[name] = events.get(name, 0) + 1
monitoring.register_event_listener(count)
advjax.enable_compilation_cache(sys.argv[1] + "-before")
jnp.zeros(3).block_until_ready()        # compiled with another folder: the next call switches
advjax.enable_compilation_cache(sys.argv[1])
events.clear()
w = jnp.ones((16, 4)) / 16
f = jax.jit(jax.vmap(lambda x: jnp.tanh(x @ w).sum()))
print(json.dumps({"value": float(f(jnp.ones((8, 16))).sum()),
                  "hits": events.get("/jax/compilation_cache/cache_hits", 0),
                  "misses": events.get("/jax/compilation_cache/cache_misses", 0),
                  "requests": events.get("/jax/compilation_cache/compile_requests_use_cache", 0)}))
"""


def _run(cache: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env.pop(compilation_cache.OPT_OUT_ENV, None)
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(cache)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_second_process_loads_the_first_ones_programs(tmp_path):
    cache = tmp_path / "cache"
    first = _run(cache)
    files = [p for p in cache.rglob("*") if p.is_file()]
    # The first process compiled through the cache, found nothing and wrote its programs (the
    # thresholds let a millisecond CPU program in: JAX's default of 1 s would write nothing).
    assert first["requests"] >= 1 and first["misses"] >= 1 and first["hits"] == 0
    assert files
    second = _run(cache)
    # The second compiled nothing of its own: every program it asked for was a hit.
    assert second["hits"] == first["misses"] and second["misses"] == 0
    assert second["value"] == first["value"]


def _reset_jax_cache():
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from jax.experimental.compilation_cache import compilation_cache as jax_cache
    jax_cache.reset_cache()


@pytest.mark.parametrize("how", ["default", "flag", "env"])
def test_cli_run_turns_the_cache_on_before_the_study(how, tmp_path, monkeypatch):
    seen = {}

    def execute(*args, **kwargs):
        seen["dir"] = jax.config.jax_compilation_cache_dir
        raise ValueError("stop here")

    monkeypatch.setattr(pipeline, "execute", execute)
    monkeypatch.setenv(compilation_cache.CACHE_DIR_ENV, str(tmp_path / "c"))
    monkeypatch.delenv(compilation_cache.OPT_OUT_ENV, raising=False)
    argv = ["run", "quickstart", "--out", str(tmp_path / "out")]
    if how == "flag":
        argv.append("--no-compilation-cache")
    if how == "env":
        monkeypatch.setenv(compilation_cache.OPT_OUT_ENV, "0")
    try:
        assert cli.main(argv) == cli.EXIT_ERROR
    finally:
        _reset_jax_cache()
    assert seen["dir"] == (str(tmp_path / "c") if how == "default" else None)
    assert (tmp_path / "c").is_dir() == (how == "default")


def test_default_folder_and_bad_threshold(monkeypatch, tmp_path):
    monkeypatch.setenv(compilation_cache.CACHE_DIR_ENV, str(tmp_path / "x"))
    assert compilation_cache.default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv(compilation_cache.CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compilation_cache.default_cache_dir() == tmp_path / "advjax" / "jax"
    with pytest.raises(ValueError, match="min_compile_time_s"):
        compilation_cache.enable_compilation_cache(tmp_path, min_compile_time_s=-1)
