"""The one process-wide XLA:CPU option advjax sets, and why.

jaxlib 0.10's XLA:CPU hands every convolution to its YNN kernel library
(``LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION`` in the default of
``--xla_cpu_experimental_ynn_fusion_type``), and those kernels run on ONE thread: a
``(256, 14, 14, 32) → 64`` 3×3 convolution takes the same 25 ms on one core as on two, while
XLA's own convolution kernels (Eigen) take 16 ms on two. Every CNN attack step is mostly
convolutions (the values, and the input gradients of :mod:`advjax.lowering`'s ``"tangent"`` form),
so on this project's 2-core benchmark machine PGD-40 on the LeNet5 runs 1.36× faster and
APGD-100 on the ResNet-44 1.28× faster with convolutions left to XLA (PGD-10 on the ResNet-44:
no difference in the same interleaved run); ``benchmarks/results/lab_notes.md``, "XLA:CPU's
convolution kernels", and ``benchmarks/conv_threads.py``.

``import advjax`` (any submodule) therefore adds :data:`FLAG` — XLA's default list without
individual convolutions — to ``XLA_FLAGS``, unless

* ``XLA_FLAGS`` already sets ``xla_cpu_experimental_ynn_fusion_type`` (the user's choice wins);
* ``ADVJAX_XLA_CPU_TUNING`` is ``0``, ``off``, ``false`` or ``no`` (opt out);
* the installed jaxlib is not one the option was measured on (:data:`JAXLIB_VERSIONS`): XLA
  aborts the process on a flag it does not know, so a newer jaxlib runs with its own defaults
  until the option is re-measured;
* JAX's backends already started (XLA reads ``XLA_FLAGS`` once, when the first backend starts):
  then it would have no effect, and a warning says so (import advjax before running JAX code,
  or set the flag yourself).

Only XLA:CPU reads the option: GPU and TPU programs are unchanged. Values stay the same up to
float32 summation order (a different convolution kernel). :data:`STATUS` records what happened
and the benchmarks write it into their results.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping

logger = logging.getLogger(__name__)

OPTION = "xla_cpu_experimental_ynn_fusion_type"
FLAG = f"--{OPTION}=individual_dot,reduce"
OPT_OUT = "ADVJAX_XLA_CPU_TUNING"
JAXLIB_VERSIONS = ((0, 10),)  # (major, minor) series the option was measured on

# Per-jit ``compiler_options`` that restore XLA's default for one program in a tuned process (its
# default list; jaxlib 0.10.2 compiles the same HLO with it as without the flag), for side-by-side
# measurements (``benchmarks/interleaved.py --xla-default``).
XLA_DEFAULT_OPTIONS = {OPTION: "LIBRARY_FUSION_TYPE_REDUCE,"
                               "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,"
                               "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}

APPLIED = "applied"
USER_SET = "user-set"
OPTED_OUT = "opted-out"
UNSUPPORTED_JAXLIB = "unsupported-jaxlib"
TOO_LATE = "backends-already-started"


def configure(environ: MutableMapping[str, str], jaxlib_version: str | None,
              backends_started: bool) -> str:
    """Adds :data:`FLAG` to ``environ["XLA_FLAGS"]`` when it applies (see the module docstring).

    Args:
      environ: the process environment (``os.environ``), changed in place.
      jaxlib_version: the installed jaxlib's version string (``None``: not installed).
      backends_started: whether a JAX backend has been created in this process.

    Returns:
      One of :data:`APPLIED`, :data:`USER_SET`, :data:`OPTED_OUT`, :data:`UNSUPPORTED_JAXLIB`,
      :data:`TOO_LATE`.
    """
    flags = environ.get("XLA_FLAGS", "")
    if OPTION in flags:
        return USER_SET
    if environ.get(OPT_OUT, "").strip().lower() in ("0", "off", "false", "no"):
        return OPTED_OUT
    if _series(jaxlib_version) not in JAXLIB_VERSIONS:
        return UNSUPPORTED_JAXLIB
    if backends_started:
        return TOO_LATE
    environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
    return APPLIED


def _series(version: str | None) -> tuple[int, int] | None:
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except (AttributeError, ValueError):
        return None


def _jaxlib_version() -> str | None:
    from importlib import metadata
    try:
        return metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return None


def _backends_started() -> bool:
    if "jax" not in sys.modules:      # JAX not imported: no backend can exist yet
        return False
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return False


def _configure_process() -> str:
    status = configure(os.environ, _jaxlib_version(), _backends_started())
    if status == TOO_LATE:
        logger.warning(
            "advjax's XLA:CPU option %s is not active: JAX's backends started before advjax "
            "was imported, and XLA reads XLA_FLAGS only then. CNN attacks on the CPU run up to "
            "1.4x slower; import advjax first, or set XLA_FLAGS=%s yourself.", FLAG, FLAG)
    return status


STATUS = _configure_process()
