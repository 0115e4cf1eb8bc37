"""Small MNIST convolutional networks: ``MnistCNN`` and advertorch's ``LeNet5``.

Both take NHWC batches ``(B, 28, 28, 1)`` in [0, 1] (no normalisation) and return logits
``(B, 10)``.
All max pooling goes through :func:`advjax.models.pooling.max_pool_2x2`.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from advjax.models._validate import check_images
from advjax.models.activations import activation as _activation
from advjax.models.pooling import max_pool_2x2

Array = jax.Array


class MnistCNN(nn.Module):
    """A small MNIST CNN with max pooling (the "CNN on MNIST" of papers.md §1.2 / §1.8 item 6).

    ``conv 5×5 (features[0]) → act → maxpool 2 → conv 5×5 (features[1]) → act → maxpool 2 →
    flatten → dense (dense) → act → dense (num_classes)``, convolutions with "SAME" padding.
    Parameter names: ``Conv_0``, ``Conv_1``, ``Dense_0``, ``Dense_1``. With the defaults it has
    454,922 parameters. Trained with Adam (1e-3, batch 128) on the first 8,000 MNIST test images, it
    reaches 96.5 % accuracy on the last 2,000 after one epoch and 98.1 % after three (about 50 s
    per epoch on a shared 2-core CPU).

    Attributes:
      features: output channels of the two convolutions.
      dense: units of the hidden dense layer.
      num_classes: number of classes ``K``.
      activation: name of the activation (see :func:`advjax.models.activation`).
    """

    features: Sequence[int] = (32, 64)
    dense: int = 128
    num_classes: int = 10
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """Logits ``(B, K)`` of NHWC images ``x`` ``(B, H, W, C)`` in [0, 1]."""
        del train
        check_images(x)
        act = _activation(self.activation)
        h = x
        for i, feat in enumerate(self.features):
            h = nn.Conv(int(feat), (5, 5), padding="SAME", name=f"Conv_{i}")(h)
            h = max_pool_2x2(act(h))
        h = h.reshape((h.shape[0], -1))
        h = act(nn.Dense(self.dense, name="Dense_0")(h))
        return nn.Dense(self.num_classes, name="Dense_1")(h)


class LeNet5(nn.Module):
    """advertorch's MNIST ``LeNet5`` (``advertorch_examples``), in NHWC.

    ``conv1`` 3×3 (1→32, padding 1) → ReLU → maxpool 2 → ``conv2`` 3×3 (32→64, padding 1) → ReLU →
    maxpool 2 → flatten (NHWC order, 7·7·64 = 3136) → ``linear1`` (200) → ReLU → ``linear2`` (10).
    Parameter names follow the PyTorch state dict (``conv1``, ``conv2``, ``linear1``, ``linear2``);
    :func:`advjax.models.load_lenet5` imports the released weights.

    Attributes:
      num_classes: number of classes ``K``.
    """

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """Logits ``(B, K)`` of NHWC images ``x`` ``(B, 28, 28, 1)`` in [0, 1]."""
        del train
        check_images(x, channels=1)
        pad = ((1, 1), (1, 1))
        h = max_pool_2x2(nn.relu(nn.Conv(32, (3, 3), padding=pad, name="conv1")(x)))
        h = max_pool_2x2(nn.relu(nn.Conv(64, (3, 3), padding=pad, name="conv2")(h)))
        h = h.reshape((h.shape[0], -1))
        h = nn.relu(nn.Dense(200, name="linear1")(h))
        return nn.Dense(self.num_classes, name="linear2")(h)
