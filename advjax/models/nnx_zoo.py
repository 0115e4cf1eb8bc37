"""Flax NNX twins of the zoo's convolutional models: MNIST CNN, LeNet5, pre-activation ResNet.

Each twin computes the same function as its linen model (:class:`~advjax.models.MnistCNN`,
:class:`~advjax.models.LeNet5`, :class:`~advjax.models.PreActResNet`) with the same layer
hyper-parameters, initialisers and validation, and its attributes carry the linen parameter names,
so :func:`advjax.models.nnx_variables` of a twin has the layout of the linen variables and
:func:`advjax.models.nnx_from_linen` / :func:`advjax.models.linen_from_nnx` convert weights both
ways (the imported LeNet5 and Woods checkpoints load into either). Inputs are NHWC batches in
[0, 1]; outputs logits ``(B, K)``. NNX models are built in training mode (BatchNorm uses batch
statistics); call ``model.eval()`` or use :func:`advjax.models.nnx_logits_fn` (eval by default).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from advjax.models._validate import check_images
from advjax.models.activations import activation as _activation
from advjax.models.pooling import max_pool_2x2
from advjax.models.resnet import CIFAR10_MEAN, CIFAR10_STD
from advjax.models.resnet import _act as _resnet_act

Array = jax.Array


class NNXMnistCNN(nnx.Module):
    """NNX twin of :class:`advjax.models.MnistCNN` (conv 5×5 → act → pool, twice; dense; dense).

    Args:
      features: output channels of the two convolutions.
      dense: units of the hidden dense layer.
      num_classes: number of classes ``K``.
      activation: name of the activation (see :func:`advjax.models.activation`).
      input_shape: ``(H, W, C)`` of one input; sets the input channels and the flattened size
        ``(H // 4) · (W // 4) · features[1]`` of the first dense layer (``(28, 28, 1)``: MNIST).
      rngs: ``nnx.Rngs`` for the initialisation.
    """

    def __init__(self, features: Sequence[int] = (32, 64), dense: int = 128,
                 num_classes: int = 10, activation: str = "relu",
                 input_shape: Sequence[int] = (28, 28, 1), *, rngs: nnx.Rngs):
        if len(features) != 2:
            raise ValueError(f"`features` must have two entries; got {tuple(features)}.")
        if len(input_shape) != 3:
            raise ValueError(f"`input_shape` must be (H, W, C); got {tuple(input_shape)}.")
        h, w, c = (int(v) for v in input_shape)
        f0, f1 = int(features[0]), int(features[1])
        self.activation = activation
        self._act = _activation(activation)
        self.Conv_0 = nnx.Conv(c, f0, (5, 5), padding="SAME", rngs=rngs)
        self.Conv_1 = nnx.Conv(f0, f1, (5, 5), padding="SAME", rngs=rngs)
        self.Dense_0 = nnx.Linear((h // 2 // 2) * (w // 2 // 2) * f1, int(dense), rngs=rngs)
        self.Dense_1 = nnx.Linear(int(dense), int(num_classes), rngs=rngs)

    def __call__(self, x: Array) -> Array:
        """Logits ``(B, K)`` of NHWC images ``x`` ``(B, H, W, C)`` in [0, 1]."""
        check_images(x)
        h = max_pool_2x2(self._act(self.Conv_0(x)))
        h = max_pool_2x2(self._act(self.Conv_1(h)))
        h = h.reshape((h.shape[0], -1))
        return self.Dense_1(self._act(self.Dense_0(h)))


class NNXLeNet5(nnx.Module):
    """NNX twin of advertorch's MNIST :class:`advjax.models.LeNet5` (28×28×1 inputs).

    Args:
      num_classes: number of classes ``K``.
      rngs: ``nnx.Rngs`` for the initialisation.
    """

    def __init__(self, num_classes: int = 10, *, rngs: nnx.Rngs):
        pad = ((1, 1), (1, 1))
        self.conv1 = nnx.Conv(1, 32, (3, 3), padding=pad, rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), padding=pad, rngs=rngs)
        self.linear1 = nnx.Linear(7 * 7 * 64, 200, rngs=rngs)
        self.linear2 = nnx.Linear(200, int(num_classes), rngs=rngs)

    def __call__(self, x: Array) -> Array:
        """Logits ``(B, K)`` of NHWC images ``x`` ``(B, 28, 28, 1)`` in [0, 1]."""
        check_images(x, channels=1)
        h = max_pool_2x2(nnx.relu(self.conv1(x)))
        h = max_pool_2x2(nnx.relu(self.conv2(h)))
        h = h.reshape((h.shape[0], -1))
        return self.linear2(nnx.relu(self.linear1(h)))


def _conv3x3(cin: int, cout: int, strides: int, rngs: nnx.Rngs, zero_init: bool = False):
    init = nnx.initializers.zeros if zero_init else nnx.initializers.he_uniform()
    return nnx.Conv(cin, cout, (3, 3), strides=(strides, strides), padding=((1, 1), (1, 1)),
                    use_bias=False, kernel_init=init, rngs=rngs)


def _bn(features: int, axis_name: str | None, rngs: nnx.Rngs) -> nnx.BatchNorm:
    # Flax momentum 0.9 / eps 1e-5 = PyTorch's BatchNorm2d defaults, as in the linen model.
    return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, axis_name=axis_name, rngs=rngs)


class NNXPreActBlock(nnx.Module):
    """NNX twin of :class:`advjax.models.PreActBlock` (papers.md §2.3).

    Args:
      in_features: input channels.
      features: output channels.
      strides: stride of the first convolution (and of the 3×3 shortcut convolution).
      activation: ``"relu"`` or ``"hhrelu"``.
      hhrelu_delta: ``delta`` of the half-Huber ReLU.
      axis_name: vmap / pmap axis over which BatchNorm takes batch statistics.
      rngs: ``nnx.Rngs`` for the initialisation.
    """

    def __init__(self, in_features: int, features: int, strides: int = 1,
                 activation: str = "relu", hhrelu_delta: float = 0.5,
                 axis_name: str | None = None, *, rngs: nnx.Rngs):
        self._act = _resnet_act(activation, hhrelu_delta)
        self.pre_bn = _bn(in_features, axis_name, rngs)
        self.conv1 = _conv3x3(in_features, features, strides, rngs)
        self.bn = _bn(features, axis_name, rngs)
        self.conv2 = _conv3x3(features, features, 1, rngs, zero_init=True)
        if strides != 1 or in_features != features:
            self.shortcut = _conv3x3(in_features, features, strides, rngs)
        else:
            self.shortcut = None

    def __call__(self, x: Array) -> Array:
        """``(B, H, W, in_features)`` → ``(B, H / s, W / s, features)``."""
        pre = self._act(self.pre_bn(x))
        h = self._act(self.bn(self.conv1(pre)))
        h = self.conv2(h)
        return h + (x if self.shortcut is None else self.shortcut(pre))


class NNXPreActResNet(nnx.Module):
    """NNX twin of :class:`advjax.models.PreActResNet` (Woods et al. 2019; papers.md §2.3).

    Args:
      depth: ``6 n + 2`` (44 → 7 blocks per superblock).
      num_classes: number of classes ``K``.
      widths: channels of the three superblocks; the stem has ``widths[0]``.
      strides: strides of the first block of each superblock.
      activation: ``"relu"`` or ``"hhrelu"`` (the "robust additions").
      hhrelu_delta: ``delta`` of the half-Huber ReLU (0.5 in the released checkpoints).
      axis_name: optional BatchNorm axis name (batch statistics over a vmapped axis).
      mean: per-channel input normalisation mean, applied inside the model.
      std: per-channel input normalisation standard deviation.
      rngs: ``nnx.Rngs`` for the initialisation.
    """

    def __init__(self, depth: int = 44, num_classes: int = 10,
                 widths: Sequence[int] = (16, 32, 64), strides: Sequence[int] = (1, 2, 2),
                 activation: str = "relu", hhrelu_delta: float = 0.5,
                 axis_name: str | None = None, mean: Sequence[float] = CIFAR10_MEAN,
                 std: Sequence[float] = CIFAR10_STD, *, rngs: nnx.Rngs):
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"`depth` must be 6 n + 2 with n >= 1; got {depth}.")
        if len(widths) != len(strides):
            raise ValueError(f"`widths` {tuple(widths)} and `strides` {tuple(strides)} must have "
                             "the same length.")
        if len(mean) != len(std):
            raise ValueError(f"`mean` {tuple(mean)} and `std` {tuple(std)} must have the same "
                             "length.")
        self._act = _resnet_act(activation, hhrelu_delta)
        self.depth, self.num_classes = int(depth), int(num_classes)
        self.widths = tuple(int(v) for v in widths)
        self.strides = tuple(int(v) for v in strides)
        self.activation, self.hhrelu_delta = activation, float(hhrelu_delta)
        self.axis_name = axis_name
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.stem = _conv3x3(len(self.mean), int(widths[0]), 1, rngs)
        names = []
        cin, n = int(widths[0]), (depth - 2) // 6
        for s, (width, stride) in enumerate(zip(widths, strides, strict=True)):
            for b in range(n):
                name = f"stage{s + 1}_block{b}"
                setattr(self, name, NNXPreActBlock(cin, int(width), int(stride) if b == 0 else 1,
                                                   activation, hhrelu_delta, axis_name,
                                                   rngs=rngs))
                names.append(name)
                cin = int(width)
        self.block_names = tuple(names)
        self.final_bn = _bn(cin, axis_name, rngs)
        self.classifier = nnx.Conv(cin, self.num_classes, (1, 1), use_bias=True,
                                   kernel_init=nnx.initializers.he_uniform(), rngs=rngs)

    def __call__(self, x: Array) -> Array:
        """Logits ``(B, K)`` of NHWC images ``x`` ``(B, 32, 32, 3)`` in [0, 1] (un-normalised)."""
        check_images(x, channels=len(self.mean))
        h = (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)
        h = self.stem(h)
        for name in self.block_names:
            h = getattr(self, name)(h)
        h = self._act(self.final_bn(h))
        if h.shape[1:3] != (8, 8):
            raise ValueError(f"`x` must reduce to 8×8 maps before the 8×8 average pooling (32×32 "
                             f"inputs for strides (1, 2, 2)); got input shape {tuple(x.shape)}.")
        h = nnx.avg_pool(h, (8, 8), strides=(8, 8), padding="VALID")
        return self.classifier(h).reshape((h.shape[0], self.num_classes))

