"""RobustBench architectures: full-size shapes from jax.eval_shape, the factory, input checks."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.models import robustbench as rb

# Trainable parameter counts of the FULL-size models, sum(p.numel()) of the PyTorch models built
# by benchmarks/robustbench_fixtures.py on the meta device (also in the fixtures' manifest.json):
# RobustBench's wide_resnet.py / dm_wide_resnet.py / resnet.py (commit 78fcc9e) for its families,
# torchvision 0.29.1's resnet50() / wide_resnet50_2() for the "-imagenet" ResNets, and timm
# 1.0.31's create_model(..., pretrained=False) for ConvNeXt / ViT / DeiT (names in the comments).
FULL_SIZE_PARAMS = {
    "WideResNet-28-10": 36_479_194,
    "WideResNet-34-10": 46_160_474,
    "WideResNet-34-20": 184_531_674,
    "WideResNet-70-16": 266_796_506,
    "DMWideResNet-28-10": 36_479_194,
    "DMWideResNet-70-16-silu": 266_796_506,
    "DMWideResNet-106-16": 415_475_162,
    "DMPreActResNet-18": 12_548_426,
    "PreActResNet-18": 11_171_146,
    "ResNet-18": 11_173_962,
    "ResNet-50": 23_520_842,
    "ResNet-50-imagenet": 25_557_032,  # torchvision.models.resnet50()
    "WideResNet-50-2-imagenet": 68_883_240,  # torchvision.models.wide_resnet50_2()
    "ConvNeXt-T": 28_589_128,  # timm convnext_tiny
    "ConvNeXt-S": 50_223_688,  # timm convnext_small
    "ConvNeXt-B": 88_591_464,  # timm convnext_base
    "ConvNeXt-L": 197_767_336,  # timm convnext_large
    "ViT-S-16": 22_050_664,  # timm vit_small_patch16_224
    "ViT-B-16": 86_567_656,  # timm vit_base_patch16_224
    "ViT-L-16": 304_326_632,  # timm vit_large_patch16_224
    "DeiT-S": 22_050_664,  # timm deit_small_patch16_224
    "DeiT-B": 86_567_656,  # timm deit_base_patch16_224
}


def test_recorded_counts_are_the_fixture_scripts():
    manifest = json.loads((Path(__file__).parent / "fixtures" / "robustbench" /
                           "manifest.json").read_text())
    for name, n in manifest["full_size_params"].items():
        assert FULL_SIZE_PARAMS[name] == n, name


@pytest.mark.parametrize("arch", sorted(FULL_SIZE_PARAMS))
def test_full_size_parameter_counts_without_allocation(arch):
    module = rb.build(arch)
    assert rb.count_params(module) == FULL_SIZE_PARAMS[arch]  # jax.eval_shape: nothing allocated


@pytest.mark.parametrize("arch,size,k", [("WideResNet-28-10", 32, 10),
                                         ("ResNet-50-imagenet", 224, 1000),
                                         ("ConvNeXt-T", 224, 1000), ("ViT-B-16", 224, 1000)])
def test_full_size_output_shapes(arch, size, k):
    module = rb.build(arch)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size,
                                                                                 3))))
    out = jax.eval_shape(module.apply, variables, x)
    assert out.shape == (2, k)


def test_factory_names_and_options():
    m = rb.build("DMWideResNet-70-16-silu", num_classes=100, mean=(0.5, 0.5, 0.5),
                 std=(0.25, 0.25, 0.25))
    assert isinstance(m, rb.DMWideResNet)
    assert (m.depth, m.width, m.activation, m.num_classes) == (70, 16, "silu", 100)
    assert m.mean == (0.5, 0.5, 0.5) and m.std == (0.25, 0.25, 0.25)
    assert rb.build("DMWideResNet-28-10").activation == "relu"
    assert rb.build("dmwideresnet_28_10_swish").activation == "silu"  # separators, case, Swish
    assert rb.build("DMWideResNet-28-10").mean == (0.4914, 0.4822, 0.4465)  # DeepMind default
    assert rb.build("WideResNet-34-20").mean is None  # classic WRN: raw [0, 1] input
    assert rb.build("WRN-34-20").widen_factor == 20
    assert isinstance(rb.build("PreActResNet-18"), rb.PreActResNet)
    assert rb.build("DMPreActResNet-18-silu").activation == "silu"
    r = rb.build("ResNet-50-imagenet")
    assert isinstance(r, rb.ImageNetResNet) and r.num_classes == 1000
    assert r.mean == rb.IMAGENET_MEAN
    assert rb.build("WideResNet-50-2-imagenet").width_per_group == 128
    assert isinstance(rb.build("ResNet-18"), rb.ResNet)
    c = rb.build("ConvNeXt-B")
    assert isinstance(c, rb.ConvNeXt) and tuple(c.dims) == (128, 256, 512, 1024)
    v = rb.build("ViT-B-16")
    assert (v.dim, v.depth, v.heads, v.patch_size, v.mean) == (768, 12, 12, 16, (0.5,) * 3)
    d = rb.build("DeiT-S")
    assert (d.dim, d.heads, d.mean) == (384, 6, rb.IMAGENET_MEAN)


def test_factory_errors_name_the_argument():
    with pytest.raises(ValueError, match="unknown architecture 'VGG-16'"):
        rb.build("VGG-16")
    with pytest.raises(ValueError, match="`mean` and `std`"):
        rb.build("WideResNet-28-10", mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="`num_classes`"):
        rb.build("WideResNet-28-10", num_classes=0)
    def shapes(arch, size):  # the checks run at trace time: no computation needed
        m = rb.build(arch)
        return jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))

    with pytest.raises(ValueError, match="`depth`"):
        shapes("WideResNet-27-10", 32)
    with pytest.raises(ValueError, match="8×8"):
        shapes("WideResNet-10-1", 64)
    with pytest.raises(ValueError, match="multiples of 32"):
        shapes("ConvNeXt-T", 200)
    with pytest.raises(ValueError, match="224×224"):
        shapes("ViT-B-16", 32)


def test_dm_stride2_padding_is_bottom_right():
    """A stride-2 3×3 conv of DeepMind's blocks pads (0, 1): the output at (0, 0) sees input rows
    and columns 0..2 (not -1..1). Checked on a one-hot input against the kernel itself."""
    from advjax.models.robustbench._layers import conv
    from advjax.models.robustbench.dm_wide_resnet import _same_pads

    layer = conv(1, 3, "c", strides=2, padding=_same_pads(2))
    x = jnp.zeros((1, 8, 8, 1)).at[0, 0, 0, 0].set(1.0)
    params = layer.init(jax.random.key(0), x)
    y = layer.apply(params, x)
    kernel = params["params"]["kernel"]
    assert y.shape == (1, 4, 4, 1)
    # the input pixel (0, 0) meets kernel tap (0, 0) at output (0, 0): no pad on top/left
    np.testing.assert_allclose(y[0, 0, 0, 0], kernel[0, 0, 0, 0], rtol=1e-6)
