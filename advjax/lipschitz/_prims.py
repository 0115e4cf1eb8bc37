"""Primitive lists shared by every jaxpr traversal of the Lipschitz analysis, and the synthetic
primitives of recognised normalisations."""

import jax.extend.core as jcore

# Primitives that call a sub-program whose primal is walked: the walk's call rule and the
# normalisation matcher both follow exactly these.
CALLS = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
         "custom_vjp_call_jaxpr", "remat", "remat2", "checkpoint", "custom_lin", "named_call")

# The parameters of a call primitive that hold its sub-program.
CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")

# Recognised normalisations (:mod:`advjax.lipschitz._normalize`) dispatch through the rule table
# as these synthetic primitives: the matched equation is replaced, for the walk, by one equation
# ``kind(base, *factors)`` whose ``match`` parameter holds the recognition.
NORMALIZATIONS = ("layer_norm", "rms_norm", "softmax", "log_softmax", "logsumexp")
SYNTHETIC = {name: jcore.Primitive(f"advjax_{name}") for name in NORMALIZATIONS}
