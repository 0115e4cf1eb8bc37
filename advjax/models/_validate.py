"""Static input checks shared by the model modules (they run at trace time, also under jit)."""

from __future__ import annotations

from advjax._checks import check_floating, check_rank


def check_images(x, name: str = "x", *, channels: int | None = None) -> None:
    """``x`` is a float batch of NHWC images ``(B, H, W, C)`` (with ``C == channels`` if given)."""
    check_rank(x, name, 4)
    check_floating(x, name)
    if channels is not None and x.shape[-1] != channels:
        raise ValueError(
                f"`{name}` must have {channels} channel(s) in the last axis (NHWC); got shape "
                f"{tuple(x.shape)}.")


def check_batch(x, name: str = "x") -> None:
    """``x`` is a float batch ``(B, ...)`` with at least one feature axis."""
    if x.ndim < 2:
        raise ValueError(
                f"`{name}` must be a batch (B, ...) with rank >= 2; got shape {tuple(x.shape)}.")
    check_floating(x, name)
