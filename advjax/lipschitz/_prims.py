"""Primitive lists shared by every jaxpr traversal of the Lipschitz analysis."""

# Primitives that call a sub-program whose primal is walked: the walk's call rule and the
# normalisation matcher both follow exactly these.
CALLS = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
         "custom_vjp_call_jaxpr", "remat", "remat2", "checkpoint", "custom_lin", "named_call")

# The parameters of a call primitive that hold its sub-program.
CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
