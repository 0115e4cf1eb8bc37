"""Independent numpy references for the model tests (PyTorch layouts: NCHW inputs, OIHW weights).

Nothing here uses Flax or the conversion code under test: forwards are written from the PyTorch
definitions (symmetric zero padding, C,H,W flatten, eval-mode BatchNorm).
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np


def conv2d_nchw(x, w, b=None, *, stride=1, pad=0):
    """PyTorch ``F.conv2d``: ``x`` (B, C, H, W), ``w`` (O, C, kh, kw), symmetric zero padding."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    _, _, hp, wp = xp.shape
    _, _, kh, kw = w.shape
    ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
            out += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j])
    if b is not None:
        out += np.asarray(b, np.float64)[None, :, None, None]
    return out


def maxpool2_nchw(x):
    b, c, h, w = x.shape
    x = x[:, :, :h // 2 * 2, :w // 2 * 2]
    return x.reshape(b, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def relu(x):
    return np.maximum(x, 0.0)


def hhrelu(x, d):
    return np.where(x <= 0, 0.0, np.where(x <= d, x * x / (2 * d), x - d / 2))


def batchnorm_eval(x, p, prefix, eps=1e-5):
    mean = p[prefix + "running_mean"][None, :, None, None]
    var = p[prefix + "running_var"][None, :, None, None]
    gamma = p[prefix + "weight"][None, :, None, None]
    beta = p[prefix + "bias"][None, :, None, None]
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def lenet5_torch_forward(state, x_nhwc):
    """advertorch LeNet5 forward from its PyTorch state dict; ``x_nhwc`` (B, 28, 28, 1)."""
    x = np.transpose(np.asarray(x_nhwc, np.float64), (0, 3, 1, 2))
    h = maxpool2_nchw(relu(conv2d_nchw(x, state["conv1.weight"], state["conv1.bias"], pad=1)))
    h = maxpool2_nchw(relu(conv2d_nchw(h, state["conv2.weight"], state["conv2.bias"], pad=1)))
    h = h.reshape(h.shape[0], -1)  # C, H, W order
    h = relu(h @ state["linear1.weight"].T + state["linear1.bias"])
    return h @ state["linear2.weight"].T + state["linear2.bias"]


def woods_resnet_torch_forward(state, x_nhwc, blocks_per_stage):
    """Woods et al. pre-activation ResNet (eval mode) from its PyTorch state dict (``pipe.*``)."""
    p = {k: np.asarray(v, np.float64) for k, v in state.items()}
    x = np.transpose(np.asarray(x_nhwc, np.float64), (0, 3, 1, 2))
    offset = p["input_offset"]
    x = (x - offset[0][None, :, None, None]) / offset[1][None, :, None, None]

    def act(h, key):
        return hhrelu(h, float(p[key])) if key in p else relu(h)

    h = conv2d_nchw(x, p["pipe.0.weight"], pad=1)
    for s in (1, 2, 3):
        for blk in range(blocks_per_stage):
            pre_key = f"pipe.{s}.{blk}."
            stride = 2 if (s > 1 and blk == 0) else 1
            pre = act(batchnorm_eval(h, p, pre_key + "pre.0."), pre_key + "pre.1.d")
            m = conv2d_nchw(pre, p[pre_key + "main.0.weight"], stride=stride, pad=1)
            m = act(batchnorm_eval(m, p, pre_key + "main.1."), pre_key + "main.2.d")
            m = conv2d_nchw(m, p[pre_key + "main.3.weight"], pad=1)
            if pre_key + "shortcut.weight" in p:
                sc = conv2d_nchw(pre, p[pre_key + "shortcut.weight"], stride=stride, pad=1)
            else:
                sc = h
            h = m + sc
    h = act(batchnorm_eval(h, p, "pipe.4."), "pipe.5.d")
    h = h.mean(axis=(2, 3), keepdims=True)  # AvgPool2d(8) of an 8x8 map
    out = conv2d_nchw(h, p["pipe.7.weight"], p["pipe.7.bias"])
    return out[:, :, 0, 0]


def random_woods_state(rng, *, blocks=1, widths=(16, 32, 64), hhrelu_delta=None, classes=10):
    """A random state dict with the names and layouts of the Woods et al. checkpoints."""
    st = OrderedDict()
    st["input_offset"] = np.array([[0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261]], np.float32)

    def conv(o, i, k=3):
        return (rng.normal(size=(o, i, k, k)) * np.sqrt(2.0 / (i * k * k))).astype(np.float32)

    def bn(prefix, c):
        st[prefix + "weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        st[prefix + "bias"] = rng.normal(scale=0.1, size=c).astype(np.float32)
        st[prefix + "running_mean"] = rng.normal(scale=0.1, size=c).astype(np.float32)
        st[prefix + "running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
        st[prefix + "num_batches_tracked"] = np.array(100, np.int64)

    def d(key):
        if hhrelu_delta is not None:
            st[key] = np.array(hhrelu_delta, np.float32)

    st["pipe.0.weight"] = conv(widths[0], 3)
    c_in = widths[0]
    for s, width in enumerate(widths, start=1):
        for blk in range(blocks):
            pre = f"pipe.{s}.{blk}."
            bn(pre + "pre.0.", c_in)
            d(pre + "pre.1.d")
            st[pre + "main.0.weight"] = conv(width, c_in)
            bn(pre + "main.1.", width)
            d(pre + "main.2.d")
            st[pre + "main.3.weight"] = conv(width, width)
            if c_in != width or (s > 1 and blk == 0):
                st[pre + "shortcut.weight"] = conv(width, c_in)
            c_in = width
    bn("pipe.4.", c_in)
    d("pipe.5.d")
    st["pipe.7.weight"] = conv(classes, c_in, 1)
    st["pipe.7.bias"] = rng.normal(size=classes).astype(np.float32)
    return st


def read_mnist_test(folder: Path, n: int):
    """First ``n`` MNIST test images ``(n, 28, 28, 1)`` float32 in [0, 1] and labels, from IDX."""
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "rb") as fh:
        magic, count, rows, cols = struct.unpack(">IIII", fh.read(16))
        assert magic == 2051, magic
        images = np.frombuffer(fh.read(n * rows * cols), np.uint8).reshape(n, rows, cols, 1)
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "rb") as fh:
        magic, count = struct.unpack(">II", fh.read(8))
        assert magic == 2049, magic
        labels = np.frombuffer(fh.read(n), np.uint8)
    return images.astype(np.float32) / 255.0, labels.astype(np.int32)


# ---- writer of legacy torch files (for tests; torch is not needed) ---------------------------

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def legacy_bytes(main_pickle: bytes, keys=(), storages=(), *, sys_info=None) -> bytes:
    """Assemble a legacy file: magic, protocol, sys info, ``main_pickle``, keys, storage data."""
    buf = io.BytesIO()
    pickle.dump(LEGACY_MAGIC, buf, protocol=2)
    pickle.dump(1001, buf, protocol=2)
    pickle.dump(sys_info or {"protocol_version": 1001, "little_endian": True,
                             "type_sizes": {"short": 2, "int": 4, "long": 4}}, buf, protocol=2)
    buf.write(main_pickle)
    pickle.dump(list(keys), buf, protocol=2)
    for arr in storages:
        arr = np.ascontiguousarray(arr)
        buf.write(struct.pack("<q", arr.size))
        buf.write(arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    return buf.getvalue()
