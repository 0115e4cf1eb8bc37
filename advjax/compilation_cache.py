"""JAX's persistent compilation cache, switched on for advjax's programs.

Compiling is most of the wait of a short evaluation (an AutoAttack ``evaluate`` compiles one
program per stage and chunk size, seconds to tens of seconds each on a CPU, and runs them in
less). JAX can keep the compiled executables on disk and load them in the next process that
compiles the same program (same HLO, devices, jax/jaxlib version and XLA flags) instead of
compiling again. :func:`enable_compilation_cache` turns that on with thresholds low enough that
CPU programs are kept too (JAX's default keeps only programs that took 1 s or more to compile).

The ``advjax`` command calls it before its first JAX call (``--no-compilation-cache`` or
``ADVJAX_COMPILATION_CACHE=0`` opt out). Scripts and notebooks call it themselves, first thing
after the imports::

    import advjax
    advjax.enable_compilation_cache()          # ~/.cache/advjax/jax, or $ADVJAX_CACHE_DIR

Programs that call back to Python (``jax.debug.callback``, ``jax.pure_callback``) are never
cached by JAX.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "ADVJAX_CACHE_DIR"
OPT_OUT_ENV = "ADVJAX_COMPILATION_CACHE"
_OFF = ("0", "off", "false", "no")


def default_cache_dir() -> Path:
    """``$ADVJAX_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/advjax/jax``
    (``~/.cache/advjax/jax``)."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "advjax" / "jax"


def opted_out() -> bool:
    """Whether ``ADVJAX_COMPILATION_CACHE`` is ``0``, ``off``, ``false`` or ``no``."""
    return os.environ.get(OPT_OUT_ENV, "").strip().lower() in _OFF


def enable_compilation_cache(path: str | os.PathLike | None = None, *,
                             min_compile_time_s: float = 0.0) -> Path:
    """Turns on JAX's persistent compilation cache in ``path`` for this process.

    Sets ``jax_compilation_cache_dir`` to ``path``, ``jax_persistent_cache_min_compile_time_secs``
    to ``min_compile_time_s`` (JAX's default of 1 s skips most CPU programs of a small model) and
    ``jax_persistent_cache_min_entry_size_bytes`` to -1 (no size threshold). Call it before the
    first compilation (programs compiled before are not written); called again with another
    folder, the following compilations use the new one.

    Args:
      path: cache folder (created); default :func:`default_cache_dir`.
      min_compile_time_s: programs that compiled faster than this are not written (>= 0).

    Returns:
      The cache folder.

    Raises:
      ValueError: ``min_compile_time_s`` negative or not a number.
    """
    import jax

    try:
        min_compile_time_s = float(min_compile_time_s)
    except (TypeError, ValueError):
        raise ValueError(f"`min_compile_time_s` must be a number of seconds >= 0; got "
                         f"{min_compile_time_s!r}.") from None
    if not min_compile_time_s >= 0:
        raise ValueError(f"`min_compile_time_s` must be >= 0; got {min_compile_time_s}.")
    folder = default_cache_dir() if path is None else Path(path).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_s)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    # JAX opens the cache folder once, at the first compilation after a folder is set; a
    # reset makes the next compilation open this one (a call after an earlier
    # enable_compilation_cache(other) would otherwise keep writing to the other folder).
    from jax.experimental.compilation_cache import compilation_cache as jax_cache
    jax_cache.reset_cache()
    logger.info("JAX persistent compilation cache: %s", folder)
    return folder
