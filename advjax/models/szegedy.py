"""The MNIST networks of Szegedy et al. (2014), "Intriguing properties of neural networks".

papers.md §1.1, §1.5 (Table 1, Table 3) and §1.8: softmax regression ``FC10``; fully connected
sigmoid nets ``FC100-100-10``, ``FC200-200-10``, ``FC123-456-10``; and ``AE400-10``, a softmax
classifier on the code of a sparse autoencoder with 400 sigmoid units (pretrained, then frozen).

Parameter names are stable, so training code can find layers by name:

- ``FC10``: ``params["Dense_0"]`` (``kernel (D, 10)``, ``bias (10,)``).
- ``MLP``: ``params["Dense_0"]`` … ``params[f"Dense_{L}"]`` in order from input to output, where
  ``L = len(hidden)``; the last one is the 10-way classifier. The number of units ``k`` of a layer
  (for Szegedy's per-layer weight decay ``λ_k·Σw²/k``) is ``kernel.shape[-1]``.
- ``AutoencoderClassifier``: ``params["encoder"]`` (``Dense`` D→400, sigmoid code),
  ``params["decoder"]`` (``Dense`` 400→D, sigmoid reconstruction) and ``params["classifier"]``
  (``Dense`` 400→10). Freeze the encoder by masking ``params["encoder"]`` in the optimiser.

All modules take a batch ``(B, ...)`` (MNIST: ``(B, 28, 28, 1)`` in [0, 1]), flatten it, and return
logits ``(B, 10)``. They have no batch statistics; ``train`` is accepted (and ignored) so that all
models of the zoo can be called the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from advjax.models._validate import check_batch
from advjax.models.activations import activation as _activation

Array = jax.Array

SZEGEDY_MODELS = ("FC10", "FC100-100-10", "FC200-200-10", "FC123-456-10", "AE400-10")

# Per-layer weight decay λ of Table 1 / Table 3 (papers.md §1.5), input layer first. FC10 was
# trained with λ in {1e-4, 1e-2, 1}: Table 1 lists it as FC10(λ).
SZEGEDY_WEIGHT_DECAY = {
    "FC10(1e-4)": (1e-4,),
    "FC10(1e-2)": (1e-2,),
    "FC10(1)": (1.0,),
    "FC100-100-10": (1e-5, 1e-5, 1e-6),
    "FC200-200-10": (1e-5, 1e-5, 1e-6),
    "FC123-456-10": (1e-5, 1e-5, 1e-6),
    "AE400-10": (1e-6,),
}


def _flatten(x: Array) -> Array:
    check_batch(x)
    return x.reshape((x.shape[0], -1))


class FC10(nn.Module):
    """Softmax regression (``FC10`` of papers.md §1.5, Table 1): flatten → ``Dense_0`` (10 units).

    Attributes:
      num_classes: number of classes ``K`` (10 for MNIST).
    """

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """Logits ``(B, K)`` of a batch ``x`` ``(B, ...)`` (e.g. ``(B, 28, 28, 1)`` in [0, 1])."""
        del train
        return nn.Dense(self.num_classes, name="Dense_0")(_flatten(x))


class MLP(nn.Module):
    """Fully connected network: flatten → (``Dense_i`` → activation) per hidden layer → ``Dense_L``.

    ``MLP(hidden=(100, 100))`` is Szegedy's ``FC100-100-10`` (papers.md §1.5): sigmoid hidden layers
    and a softmax classifier (logits are returned; the softmax is in the loss).

    Attributes:
      hidden: units of the hidden layers, input side first.
      num_classes: number of classes ``K``.
      activation: name of the hidden activation (see :func:`advjax.models.activation`).
    """

    hidden: Sequence[int] = (100, 100)
    num_classes: int = 10
    activation: str = "sigmoid"

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """Logits ``(B, K)`` of a batch ``x`` ``(B, ...)``."""
        del train
        act = _activation(self.activation)
        h = _flatten(x)
        for i, units in enumerate(self.hidden):
            h = act(nn.Dense(int(units), name=f"Dense_{i}")(h))
        return nn.Dense(self.num_classes, name=f"Dense_{len(self.hidden)}")(h)


class AutoencoderClassifier(nn.Module):
    """``AE400-10`` (papers.md §1.5): a sparse autoencoder's sigmoid code with a softmax classifier.

    The autoencoder ``x → code = sigmoid(encoder(x)) → sigmoid(decoder(code))`` is pretrained on
    its own (reconstruction loss plus a sparsity penalty on the code; see ``advjax.train``), then
    frozen; only ``classifier`` is trained on the code ("this layer was not fine-tuned"). ``init``
    creates all three parameter sub-trees (``encoder``, ``decoder``, ``classifier``).

    Use the methods through ``apply``: ``model.apply(variables, x, method="encode")``,
    ``method="decode"`` (on codes) and ``method="reconstruct"``.

    Attributes:
      input_shape: shape of one example (``(28, 28, 1)`` for MNIST); reconstructions have it.
      code_units: units of the code (400).
      num_classes: number of classes ``K``.
    """

    input_shape: Sequence[int] = (28, 28, 1)
    code_units: int = 400
    num_classes: int = 10

    def setup(self) -> None:
        size = 1
        for d in self.input_shape:
            size *= int(d)
        self.encoder = nn.Dense(self.code_units)
        self.decoder = nn.Dense(size)
        self.classifier = nn.Dense(self.num_classes)

    def _check_input(self, x: Array) -> Array:
        check_batch(x)
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(
                    f"`x` must have shape (B, {', '.join(map(str, self.input_shape))}); got "
                    f"{tuple(x.shape)}.")
        return x.reshape((x.shape[0], -1))

    def encode(self, x: Array) -> Array:
        """Code activations ``(B, code_units)`` in (0, 1) of a batch ``x`` ``(B, *input_shape)``."""
        return nn.sigmoid(self.encoder(self._check_input(x)))

    def decode(self, code: Array) -> Array:
        """Reconstructions ``(B, *input_shape)`` in (0, 1) of codes ``(B, code_units)``."""
        if code.ndim != 2 or code.shape[-1] != self.code_units:
            raise ValueError(
                    f"`code` must have shape (B, {self.code_units}); got {tuple(code.shape)}.")
        out = nn.sigmoid(self.decoder(code))
        return out.reshape((code.shape[0], *self.input_shape))

    def reconstruct(self, x: Array) -> Array:
        """``decode(encode(x))``: reconstructions ``(B, *input_shape)`` of ``x``."""
        return self.decode(self.encode(x))

    def __call__(self, x: Array, train: bool = False) -> Array:
        """Logits ``(B, K)`` of the classifier on the code of ``x`` ``(B, *input_shape)``."""
        del train
        code = self.encode(x)
        if self.is_initializing():
            self.decode(code)  # create the decoder's parameters too
        return self.classifier(code)


def szegedy_model(name: str) -> nn.Module:
    """The module of a Table-1 / Table-3 model name of papers.md §1.5.

    Args:
      name: ``"FC10"``, ``"FC100-100-10"``, ``"FC200-200-10"``, ``"FC123-456-10"`` or ``"AE400-10"``
        (a weight-decay suffix such as ``"FC10(1e-4)"`` or a prime, ``"FC100-100-10'"``, is accepted
        and ignored: it names a training setting, not an architecture).

    Returns:
      An unbound linen module for MNIST ``(B, 28, 28, 1)`` inputs giving logits ``(B, 10)``.
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a string; got {type(name).__name__}.")
    base = name.split("(")[0].rstrip("'").strip()
    if base == "FC10":
        return FC10()
    if base == "AE400-10":
        return AutoencoderClassifier()
    if base in SZEGEDY_MODELS:
        *hidden, classes = (int(p) for p in base[2:].split("-"))
        return MLP(hidden=tuple(hidden), num_classes=classes, activation="sigmoid")
    raise ValueError(f"`name` must be one of {SZEGEDY_MODELS}; got {name!r}.")
