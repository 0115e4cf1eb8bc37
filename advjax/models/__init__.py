"""Flax model zoo and adapters to per-example ``logits_fn``."""

from advjax.models.adapters import batched, linen_logits_fn, linen_logits_fn_batch_stats, predict

__all__ = ["batched", "linen_logits_fn", "linen_logits_fn_batch_stats", "predict"]
