"""The RobustBench registry: entries against RobustBench's files, lookup errors, the generator."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from advjax.models import robustbench_registry as reg

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("robustbench_registry_tool",
                                                  ROOT / "tools" / "robustbench_registry.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_snapshot_is_recorded():
    src = reg.registry_source()
    assert len(src["commit"]) == 40 and src["commit_date"].startswith("20")
    assert src["generator"] == "tools/robustbench_registry.py"


@pytest.mark.parametrize("key, arch, clean, robust, eps, mean", [
    # Values copied by hand from RobustBench's model_info/<dataset>/<threat>/<name>.json and the
    # model's constructor in robustbench/model_zoo/*.py at the recorded commit.
    ("cifar10/Linf/Carmon2019Unlabeled", "wrn-28-10", 0.8969, 0.5953, 8 / 255, None),
    ("cifar10/Linf/Rice2020Overfitting", "wrn-34-20", 0.8534, 0.5342, 8 / 255,
     (0.4914, 0.4822, 0.4465)),
    ("cifar10/Linf/Hendrycks2019Using", "wrn-28-10", 0.8711, 0.5492, 8 / 255, (0.5, 0.5, 0.5)),
    ("cifar10/L2/Rebuffi2021Fixing_R18_cutmix_ddpm", "dm-preact-resnet-18", 0.9033, 0.7586, 0.5,
     (0.4914, 0.4822, 0.4465)),
    ("imagenet/Linf/Salman2020Do_50_2", "imagenet-wrn-50-2", 0.6846, 0.3814, 4 / 255,
     (0.485, 0.456, 0.406)),
])
def test_entries_match_robustbench(key, arch, clean, robust, eps, mean):
    dataset, threat, name = key.split("/")
    m = reg.lookup(name, dataset, threat)
    assert (m.arch, m.supported, m.clean_acc, m.autoattack_acc, m.mean) == \
        (arch, True, clean, robust, mean)
    assert m.eps_value == pytest.approx(eps, rel=1e-12)


def test_required_families_are_covered_and_others_named():
    archs = {m.arch for m in reg.list_models(supported_only=True)}
    for family in ("wrn-28-10", "wrn-34-10", "wrn-34-20", "wrn-70-16", "dm-wrn-70-16",
                   "dm-wrn-28-10", "dm-preact-resnet-18", "preact-resnet-18", "resnet-18",
                   "resnet-50", "imagenet-resnet-50", "imagenet-wrn-50-2", "convnext-b",
                   "vit-b-16", "deit-s"):
        assert family in archs, family
    for m in reg.registry().values():  # normalisation read as numbers, never as source text
        for v in (m.mean, m.std):
            assert v is None or (len(v) == 3 and all(isinstance(c, float) for c in v)), m.key
    unsupported = [m for m in reg.registry().values() if not m.supported]
    assert unsupported and all(m.arch.startswith("unsupported: ") and len(m.arch) > 14
                               for m in unsupported)


def test_unknown_name_suggests_close_names():
    with pytest.raises(ValueError, match="Carmon2019Unlabeled"):
        reg.lookup("Carmon2019Unlabled")
    with pytest.raises(ValueError, match=r"exists as cifar10/Linf/Carmon2019Unlabeled"):
        reg.lookup("Carmon2019Unlabeled", "cifar10", "L2")
    with pytest.raises(ValueError, match="`dataset` must be one of"):
        reg.lookup("Carmon2019Unlabeled", "svhn")


def test_load_refuses_unsupported_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="Chen2020AdversarialNet"):
        reg.load_robustbench("Chen2020Adversarial", path=[tmp_path / "a"] * 3)
    with pytest.raises(ValueError, match="1 checkpoint file"):
        reg.load_robustbench("Carmon2019Unlabeled", path=[tmp_path / "a", tmp_path / "b"])
    with pytest.raises(FileNotFoundError, match="not found"):
        reg.load_robustbench("Carmon2019Unlabeled", path=tmp_path / "absent.pt")


def test_parse_eps():
    assert reg.parse_eps("8/255") == 8 / 255 and reg.parse_eps("0.5") == 0.5
    with pytest.raises(ValueError, match="8/255"):
        reg.parse_eps("eight")


SYNTHETIC_ZOO = '''
class NormNet(WideResNet):
    def __init__(self, depth=34, widen_factor=20):
        super(NormNet, self).__init__(depth=depth, widen_factor=widen_factor, sub_block1=False)
        self.register_buffer('mu', torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1))
        self.register_buffer('sigma', torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1))

class Custom(nn.Module):
    pass

linf = OrderedDict([
    ('A', {'model': lambda: WideResNet(34, 10, sub_block1=True), 'gdrive_id': 'x'}),
    ('B', {'model': NormNet, 'gdrive_id': ['x', 'y']}),
    ('C', {'model': lambda: DMWideResNet(num_classes=10, depth=70, width=16,
                                        activation_fn=Swish, mean=CIFAR100_MEAN,
                                        std=CIFAR100_STD)}),
    ('D', {'model': Custom}),
    ('E', {'model': lambda: WideResNet(depth=28, widen_factor=4)}),
])
'''


def test_generator_reads_constructors_and_buffers():
    gen = _generator()
    zoo = gen.Zoo(SYNTHETIC_ZOO)
    rows = {name: (gen.classify(*zoo.call_of(node)), n) for name, node, n
            in zoo.entries()["linf"]}
    # WideResNet(depth=28, num_classes=10, widen_factor=10, ...): the 2nd positional is classes.
    assert rows["A"][0]["arch"] == "wrn-34-10" and rows["A"][0]["options"]["sub_block1"]
    b, n_files = rows["B"]
    assert (b["arch"], b["mean"], b["std"], n_files) == ("wrn-34-20", [0.1, 0.2, 0.3],
                                                         [0.4, 0.5, 0.6], 2)
    c = rows["C"][0]
    assert (c["arch"], c["options"]["activation"], c["mean"]) == \
        ("dm-wrn-70-16", "swish", list(gen.CONSTANTS["CIFAR100_MEAN"]))
    assert rows["D"][0] == dict(arch="unsupported: Custom", supported=False, options={},
                                mean=None, std=None)
    assert rows["E"][0]["arch"] == "unsupported: WideResNet-28-4" and not rows["E"][0]["supported"]


FIXTURES = Path(__file__).parent / "fixtures"


def tiny_registry(monkeypatch) -> None:
    """The registry with two CIFAR-10 entries rebuilt at WideResNet-10-1, the architecture of the
    fixture checkpoint (tools/make_robustbench_fixture.py: RobustBench's WRN code, random weights),
    so that the whole path name -> architecture -> normalisation -> file is exercised."""
    entries = dict(reg.registry())
    for name in ("Carmon2019Unlabeled", "Rice2020Overfitting"):
        key = f"cifar10/Linf/{name}"
        entries[key] = dataclasses.replace(entries[key], arch="wrn-10-1")
    monkeypatch.setattr(reg, "registry", lambda: entries)


def _noise_images() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (8, 32, 32, 3)).astype(np.float32)


@pytest.mark.parametrize("name, expected", [("Carmon2019Unlabeled", "logits"),
                                            ("Rice2020Overfitting", "logits_normalised")])
def test_load_robustbench_matches_pytorch(monkeypatch, name, expected):
    tiny_registry(monkeypatch)
    path = FIXTURES / "wrn-10-1.pt"
    logits_fn, info = reg.load_robustbench(name, "cifar10", "Linf", path=path)
    truth = np.load(FIXTURES / "wrn-10-1_logits.npz")[expected]
    got = np.stack([np.asarray(logits_fn(jnp.asarray(x))) for x in _noise_images()])
    # PyTorch and XLA sum the convolutions in different orders in float32: differences of a few
    # ulps of the activations (measured 7e-8 on logits of size ~0.3); 1e-5 leaves room for
    # other CPUs, and a wrong normalisation moves the logits by ~0.1.
    np.testing.assert_allclose(got, truth, atol=1e-5)
    assert info["sha256"] == [hashlib.sha256(path.read_bytes()).hexdigest()]
    assert info["clean_acc"] == reg.lookup(name).clean_acc and info["name"] == name


def test_mu_sigma_buffers_of_the_file_normalise(monkeypatch):
    # The file holds Rice2020OverfittingNet's mu / sigma buffers; PyTorch uses the saved values.
    # Carmon2019Unlabeled has no normalisation in the registry, so only the file can supply it.
    tiny_registry(monkeypatch)
    logits_fn, _ = reg.load_robustbench("Carmon2019Unlabeled",
                                        path=FIXTURES / "wrn-10-1-mu-sigma.pt")
    truth = np.load(FIXTURES / "wrn-10-1_logits.npz")["logits_normalised"]
    got = np.stack([np.asarray(logits_fn(jnp.asarray(x))) for x in _noise_images()])
    np.testing.assert_allclose(got, truth, atol=1e-5)  # tolerance: see the test above
