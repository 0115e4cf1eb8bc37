"""advjax.xla_cpu: when the XLA:CPU option is set, and that XLA then leaves convolutions to its own
(multi-threaded) kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from advjax import xla_cpu

SUPPORTED = "0.10.2"


def test_applies_by_appending_to_the_users_flags():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert xla_cpu.configure(env, SUPPORTED, backends_started=False) == xla_cpu.APPLIED
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {xla_cpu.FLAG}"
    empty: dict[str, str] = {}
    assert xla_cpu.configure(empty, SUPPORTED, backends_started=False) == xla_cpu.APPLIED
    assert empty["XLA_FLAGS"] == xla_cpu.FLAG


@pytest.mark.parametrize("env, version, started, status", [
    ({"XLA_FLAGS": f"--{xla_cpu.OPTION}=reduce"}, SUPPORTED, False, xla_cpu.USER_SET),
    ({xla_cpu.OPT_OUT: "0"}, SUPPORTED, False, xla_cpu.OPTED_OUT),
    ({xla_cpu.OPT_OUT: " Off "}, SUPPORTED, False, xla_cpu.OPTED_OUT),
    ({}, "0.11.0", False, xla_cpu.UNSUPPORTED_JAXLIB),
    ({}, "0.9.1", False, xla_cpu.UNSUPPORTED_JAXLIB),
    ({}, None, False, xla_cpu.UNSUPPORTED_JAXLIB),
    ({}, "dev", False, xla_cpu.UNSUPPORTED_JAXLIB),
    ({}, SUPPORTED, True, xla_cpu.TOO_LATE),
])
def test_leaves_the_environment_alone_otherwise(env, version, started, status):
    before = dict(env)
    assert xla_cpu.configure(env, version, backends_started=started) == status
    assert env == before


PROBE = """
import json, os
import advjax
import jax, jax.numpy as jnp
from jax import lax
conv = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC")))
hlo = conv.lower(jnp.ones((8, 14, 14, 32)), jnp.ones((3, 3, 32, 64))).compile().as_text()
print(json.dumps({"status": advjax.xla_cpu.STATUS, "flags": os.environ.get("XLA_FLAGS", ""),
                  "ynn": "ynn_fusion" in hlo, "platform": jax.default_backend()}))
"""


def _probe(**env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_cpu.OPT_OUT)}
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE], env=environ, capture_output=True,
                         text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_moves_convolutions_off_the_single_threaded_kernels():
    """On the jaxlib series the option was measured on, importing advjax takes the convolution
    out of XLA:CPU's YNN fusions (compiled HLO); with the opt-out it stays in one."""
    if xla_cpu._series(xla_cpu._jaxlib_version()) not in xla_cpu.JAXLIB_VERSIONS:
        pytest.skip(f"jaxlib {xla_cpu._jaxlib_version()}: the option is not applied there")
    tuned = _probe()
    if tuned["platform"] != "cpu":
        pytest.skip("the option concerns XLA:CPU only")
    assert tuned["status"] == xla_cpu.APPLIED and xla_cpu.FLAG in tuned["flags"]
    assert not tuned["ynn"]
    default = _probe(**{xla_cpu.OPT_OUT: "0"})
    assert default["status"] == xla_cpu.OPTED_OUT and xla_cpu.OPTION not in default["flags"]
    assert default["ynn"]
    kept = _probe(XLA_FLAGS=f"--{xla_cpu.OPTION}=individual_convolution")
    assert kept["status"] == xla_cpu.USER_SET and kept["ynn"]
