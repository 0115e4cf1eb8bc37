"""Torch-free import of RobustBench-style checkpoints, matched against PyTorch's own logits.

The fixtures (tests/models/fixtures/robustbench/, built by benchmarks/robustbench_fixtures.py from
RobustBench's own PyTorch definitions, torchvision's ResNet and timm's ConvNeXt / VisionTransformer
at small widths, random weights and random BatchNorm running statistics) hold each checkpoint,
fixed inputs and the PyTorch eval-mode logits. No torch here.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

from advjax.models import load_torch
from advjax.models import robustbench as rb

FIXTURES = Path(__file__).parent / "fixtures" / "robustbench"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
NAMES = sorted(MANIFEST["fixtures"])
# Tolerance: |flax - torch| <= 1e-5 · max|logits|. Both run float32 with different accumulation
# orders (XLA vs oneDNN convolutions, BatchNorm folded or not); the rounding error of a depth-L
# network grows like L · eps_f32 (1.2e-7) times the logit scale; the largest relative error seen
# over these fixtures is 1.2e-6 (the torchvision Wide-ResNet-50-2; the timm ViTs reach 8e-7), so
# 1e-5 leaves ~8x headroom and still catches any semantic slip (a wrong pad or eps moves logits by
# > 1e-3 relative).
RTOL_SCALE = 1e-5


def _load(name):
    f = MANIFEST["fixtures"][name]
    module, variables, shas = rb.load_checkpoint(FIXTURES / f"{name}.pt", arch=f["arch"],
                                                 **f["kwargs"])
    data = np.load(FIXTURES / f"{name}.npz")
    return f, module, variables, shas, data["x"], data["logits"]


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_pytorch(name):
    f, module, variables, shas, x, want = _load(name)
    assert shas == (f["sha256"],)  # the SHA-256 of the bytes that were read
    got = np.asarray(jax.jit(module.apply)(variables, x))
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=RTOL_SCALE * scale)
    # every trainable number of the PyTorch model was imported, none invented
    n = sum(a.size for a in jax.tree_util.tree_leaves(variables["params"]))
    assert n == f["params"]


def test_layouts_cover_the_robustbench_conventions():
    layouts = {f["layout"] for f in MANIFEST["fixtures"].values()}
    assert {"plain", "module_model_state_dict", "legacy_state_dict", "normalize_model",
            "positional_normalizer", "inner_of_normalize_model"} <= layouts


def test_normalize_model_wrapper_sets_the_input_normalisation():
    # preact18: normalize.mean / normalize.std / model.<key>; resnet18: model.0.mean / model.1.<key>
    _, module, *_ = _load("preact18")
    np.testing.assert_allclose(module.mean, (0.4914, 0.4822, 0.4465), rtol=1e-6)
    np.testing.assert_allclose(module.std, (0.2471, 0.2435, 0.2616), rtol=1e-6)
    _, module, *_ = _load("resnet18")
    np.testing.assert_allclose(module.mean, (0.5, 0.25, 0.75), rtol=1e-7)
    np.testing.assert_allclose(module.std, (0.2, 0.3, 0.4), rtol=1e-7)
    state, info = rb.read_state_dict(FIXTURES / "resnet18.pt")
    assert "conv1.weight" in state and not any(k.startswith(("model.", "0.", "1.")) for k in state)
    assert info["sha256"] == MANIFEST["fixtures"]["resnet18"]["sha256"]


def test_ensemble_of_files_averages_member_logits():
    *_, x, a = _load("vit_small")
    *_, x_b, b = _load("vit_small_b")
    np.testing.assert_array_equal(x, x_b)
    kwargs = MANIFEST["fixtures"]["vit_small"]["kwargs"]
    module, variables, shas = rb.load_checkpoint(
            [FIXTURES / "vit_small.pt", FIXTURES / "vit_small_b.pt"], arch="ViT-S-16", **kwargs)
    assert shas == (MANIFEST["fixtures"]["vit_small"]["sha256"],
                    MANIFEST["fixtures"]["vit_small_b"]["sha256"])
    assert isinstance(module, rb.Ensemble) and len(module.members) == 2
    got = np.asarray(module.apply(variables, x))
    want = (a + b) / 2
    np.testing.assert_allclose(got, want, rtol=0, atol=RTOL_SCALE * np.abs(want).max())


def test_html_page_is_refused_naming_the_file(tmp_path):
    page = tmp_path / "Gowal2020Uncovering_70_16.pt"
    page.write_text("<!DOCTYPE html>\n<html><head><title>Google Drive - Virus scan warning"
                    "</title></head><body>Download anyway</body></html>\n")
    with pytest.raises(ValueError, match=r"Gowal2020Uncovering_70_16\.pt.*HTML") as err:
        rb.load_checkpoint(page, arch="WideResNet-70-16")
    assert "download" in str(err.value)


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage", b"{\"json\": 1}"])
def test_non_checkpoints_are_refused_naming_the_file(tmp_path, content):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"weights\.pt.*not a PyTorch checkpoint"):
        rb.read_state_dict(path)


def test_zip_pickle_with_a_foreign_global_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:  # a data.pkl that would call os.system when unpickled
        z.writestr("archive/data.pkl", b"cos\nsystem\n(S'echo pwned'\ntR.")
    path = tmp_path / "evil.pt"
    path.write_bytes(buf.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        load_torch(path)


def test_zip_and_legacy_formats_are_both_read():
    # resnet50 is a legacy (non-zip) file nested under "state_dict", the others zip files
    assert (FIXTURES / "resnet50.pt").read_bytes()[:2] != b"PK"
    assert (FIXTURES / "resnet18.pt").read_bytes()[:2] == b"PK"
    legacy, _ = rb.read_state_dict(FIXTURES / "resnet50.pt")
    raw = load_torch(FIXTURES / "resnet50.pt")
    assert set(raw) == {"state_dict"} and set(raw["state_dict"]) == set(legacy)
    assert legacy["layer2.0.conv2.weight"].dtype == np.float32
    assert legacy["layer2.0.bn2.num_batches_tracked"].dtype == np.int64
    assert int(legacy["layer2.0.bn2.num_batches_tracked"]) == 7  # the value the script stored


def test_wrong_architecture_names_the_file_and_the_keys():
    with pytest.raises(ValueError, match=r"wrn_10_1\.pt.*(missing|unexpected)"):
        rb.load_checkpoint(FIXTURES / "wrn_10_1.pt", arch="DMWideResNet-10-1")
    with pytest.raises(ValueError, match=r"does not match Flax"):
        rb.load_checkpoint(FIXTURES / "wrn_10_1.pt", arch="WideResNet-10-2")


def test_sha256_helper_matches_the_loader():
    assert rb.file_sha256(FIXTURES / "resnet50.pt") == MANIFEST["fixtures"]["resnet50"]["sha256"]


def _rewrap_with_args(src: Path, dst: Path) -> None:
    """``dst``: ``src`` (a zip-format state dict) re-saved as ``{"state_dict": sd, "args":
    argparse.Namespace(), "best_acc": 0.5}``, by editing the pickle opcodes (no torch here)."""
    with zipfile.ZipFile(src) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    pkl_name = next(n for n in entries if n.endswith("/data.pkl"))
    body = entries[pkl_name]
    assert body[:2] == b"\x80\x02" and body[-1:] == b"."
    head = b"\x80\x02}(" + b"X\x0a\x00\x00\x00state_dict"  # EMPTY_DICT, MARK, key (no memo used)
    args = (b"X\x04\x00\x00\x00args" + b"cargparse\nNamespace\n)\x81}b"  # Namespace() + BUILD {}
            + b"X\x08\x00\x00\x00best_accG?\xe0\x00\x00\x00\x00\x00\x00")  # 0.5 as a float
    entries[pkl_name] = head + body[2:-1] + args + b"u."  # SETITEMS, STOP
    with zipfile.ZipFile(dst, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)


def test_training_checkpoint_with_argparse_namespace_is_read(tmp_path):
    path = tmp_path / "with_args.pt"
    _rewrap_with_args(FIXTURES / "wrn_10_1.pt", path)
    raw = load_torch(path, stubs=[("argparse", "Namespace")])
    assert set(raw) == {"state_dict", "args", "best_acc"} and raw["best_acc"] == 0.5
    *_, x, want = _load("wrn_10_1")
    module, variables, shas = rb.load_checkpoint(path, arch="WideResNet-10-1")
    assert shas == (rb.file_sha256(path),)
    got = np.asarray(module.apply(variables, x))
    np.testing.assert_allclose(got, want, rtol=0, atol=RTOL_SCALE * np.abs(want).max())
    with pytest.raises(pickle.UnpicklingError, match="argparse.Namespace"):
        rb.read_state_dict(path, stubs=())  # not stubbed: refused, named


def test_big_endian_zip_is_refused(tmp_path):
    src = FIXTURES / "wrn_10_1.pt"
    with zipfile.ZipFile(src) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    entries["wrn_10_1/byteorder"] = b"big"
    path = tmp_path / "big.pt"
    with zipfile.ZipFile(path, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)
    with pytest.raises(ValueError, match=r"big\.pt.*little-endian"):
        rb.read_state_dict(path)
