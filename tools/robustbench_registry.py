"""Regenerates ``advjax/models/robustbench_registry.json`` from a RobustBench checkout.

Reads, without importing (no torch, no timm),
``robustbench/model_zoo/{cifar10,cifar100,imagenet}.py`` for each entry's architecture and input
normalisation, and ``model_info/<dataset>/<threat>/<name>.json`` for the published numbers.
Entries whose architecture advjax cannot build are kept, marked ``"supported": false`` with the
architecture named.

Usage::

    python tools/robustbench_registry.py ROBUSTBENCH_GIT_DIR [--commit REV] [--out FILE]

``ROBUSTBENCH_GIT_DIR`` is a clone (or bare mirror) of github.com/RobustBench/robustbench; files are
read with ``git show REV:PATH``.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

DATASETS = {"cifar10": "cifar10.py", "cifar100": "cifar100.py", "imagenet": "imagenet.py"}
THREATS = {"linf": "Linf", "l2": "L2", "common_corruptions": "corruptions"}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
CONSTANTS = {  # robustbench/model_zoo/architectures/dm_wide_resnet.py
    "CIFAR10_MEAN": (0.4914, 0.4822, 0.4465), "CIFAR10_STD": (0.2471, 0.2435, 0.2616),
    "CIFAR100_MEAN": (0.5071, 0.4865, 0.4409), "CIFAR100_STD": (0.2673, 0.2564, 0.2762),
    "mu": (0.485, 0.456, 0.406), "sigma": (0.229, 0.224, 0.225),  # imagenet.py
    "Swish": "swish", "nn.ReLU": "relu", "nn.SiLU": "swish", "nn.GELU": "gelu",
    "PreActBlock": "PreActBlock", "BasicBlock": "BasicBlock", "Bottleneck": "Bottleneck",
}
# Architectures advjax builds (advjax.models.robustbench), by the registry's name.
WRN_SIZES = {(28, 10), (34, 10), (34, 20), (70, 16)}
TIMM_ARCHS = {"convnext_tiny": "convnext-t", "convnext_small": "convnext-s",
              "convnext_base": "convnext-b", "convnext_large": "convnext-l",
              "vit_base_patch16_224": "vit-b-16", "vit_small_patch16_224": "vit-s-16",
              "deit_small_patch16_224": "deit-s", "deit_base_patch16_224": "deit-b"}

TIMM_REGISTERED = {"tian2022deeper_deit_s_imagenet_corruptions": "deit-s",
                   "tian2022deeper_deit_b_imagenet_corruptions": "deit-b"}


def git_show(repo: Path, rev: str, path: str) -> str | None:
    proc = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{path}"], capture_output=True,
                          text=True, check=False)
    return proc.stdout if proc.returncode == 0 else None


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ast.dump(node)[:40]


def value(node: ast.AST, env: dict[str, Any]) -> Any:
    """A literal, a known constant, or an argument of the enclosing ``__init__`` (``env``)."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        pass
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):  # [0.5] * 3
        left, right = value(node.left, env), value(node.right, env)
        if isinstance(left, list) and isinstance(right, int):
            return left * right
    name = dotted(node)
    if name in env:
        return env[name]
    if name in CONSTANTS:
        return CONSTANTS[name]
    if isinstance(node, ast.Call):
        return ("call", dotted(node.func), [value(a, env) for a in node.args],
                {k.arg: value(k.value, env) for k in node.keywords})
    return ("name", name)


class Zoo:
    """One model_zoo module: its classes and its entries."""

    def __init__(self, source: str):
        self.tree = ast.parse(source)
        self.classes = {n.name: n for n in self.tree.body if isinstance(n, ast.ClassDef)}

    def entries(self) -> dict[str, list[tuple[str, ast.AST, int]]]:
        """``{threat variable: [(name, model expression, number of checkpoint files)]}``."""
        out: dict[str, list[tuple[str, ast.AST, int]]] = {}
        for node in self.tree.body:
            if not (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                    and node.targets[0].id in THREATS and isinstance(node.value, ast.Call)):
                continue
            items = node.value.args[0].elts
            rows = []
            for item in items:
                name = ast.literal_eval(item.elts[0])
                spec = item.elts[1]
                fields = {k.value: v for k, v in zip(spec.keys, spec.values, strict=True)
                          if isinstance(k, ast.Constant)}
                ids = fields.get("gdrive_id")
                rows.append((name, fields["model"],
                             len(ids.elts) if isinstance(ids, ast.List) else 1))
            out[node.targets[0].id] = rows
        return out

    def call_of(self, node: ast.AST) -> tuple[str, list, dict, dict]:
        """``(callee, args, kwargs, normalisation)`` the entry constructs, through a class of this
        file (its ``super().__init__`` call, ``mu``/``sigma`` buffers, ``2x - 1`` rescaling)."""
        if isinstance(node, ast.Lambda):
            node = node.body
        if isinstance(node, ast.Name) and node.id in self.classes:
            return self._class_call(self.classes[node.id])
        if isinstance(node, ast.Name):
            return node.id, [], {}, {}
        if isinstance(node, ast.Call):
            fn = dotted(node.func)
            if fn in self.classes:
                return self._class_call(self.classes[fn])
            return fn, [value(a, {}) for a in node.args], \
                {k.arg: value(k.value, {}) for k in node.keywords}, {}
        return dotted(node), [], {}, {}

    def _class_call(self, cls: ast.ClassDef) -> tuple[str, list, dict, dict]:
        base = dotted(cls.bases[0]) if cls.bases else "object"
        init = next((f for f in cls.body if isinstance(f, ast.FunctionDef)
                     and f.name == "__init__"), None)
        env: dict[str, Any] = {}
        args: list = []
        kwargs: dict = {}
        norm: dict = {}
        if init is not None:
            params = init.args.args[1:]
            defaults = init.args.defaults
            for p, d in zip(params[len(params) - len(defaults):], defaults, strict=True):
                env[p.arg] = value(d, {})
            for node in ast.walk(init):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                        and node.func.attr == "__init__" and isinstance(node.func.value, ast.Call) \
                        and dotted(node.func.value.func) == "super":
                    args = [value(a, env) for a in node.args]
                    kwargs = {k.arg: value(k.value, env) for k in node.keywords}
                if isinstance(node, ast.Call) and dotted(node.func).endswith("register_buffer"):
                    key = ast.literal_eval(node.args[0])
                    tensor = node.args[1]
                    while isinstance(tensor, ast.Call) and isinstance(tensor.func, ast.Attribute) \
                            and tensor.func.attr == "view":
                        tensor = tensor.func.value
                    if isinstance(tensor, ast.Call) and dotted(tensor.func) == "torch.tensor":
                        vals = value(tensor.args[0], env)
                        norm[{"mu": "mean", "sigma": "std"}.get(key, key)] = vals
        text = ast.unparse(cls)
        if "2.0 * x - 1.0" in text or "2 * x - 1" in text:
            norm = {"mean": [0.5] * 3, "std": [0.5] * 3}
        if base in ("nn.Module", "torch.nn.Module"):
            return cls.name, [], {}, norm
        return base, args, kwargs, norm


def _arg(args: list, kwargs: dict, i: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def classify(callee: str, args: list, kwargs: dict, norm: dict) -> dict[str, Any]:
    """The registry fields of one entry: ``arch`` (advjax's name), its options, normalisation."""
    mean, std = norm.get("mean"), norm.get("std")
    if callee in ("WideResNet",):
        depth = _arg(args, kwargs, 0, "depth", 28)
        width = _arg(args, kwargs, 2, "widen_factor", 10)
        ok = (depth, width) in WRN_SIZES
        arch = f"wrn-{depth}-{width}" if ok else f"unsupported: WideResNet-{depth}-{width}"
        return dict(arch=arch, supported=ok,
                    options={"sub_block1": bool(_arg(args, kwargs, 3, "sub_block1", False)),
                             "bias_last": bool(kwargs.get("bias_last", True))},
                    mean=mean, std=std)
    if callee in ("DMWideResNet", "DMPreActResNet"):
        depth = kwargs.get("depth", 28 if callee == "DMWideResNet" else 18)
        width = kwargs.get("width", 10 if callee == "DMWideResNet" else 0)
        act = kwargs.get("activation_fn", "relu")
        mean = kwargs.get("mean", CONSTANTS["CIFAR10_MEAN"])
        std = kwargs.get("std", CONSTANTS["CIFAR10_STD"])
        if callee == "DMWideResNet":
            arch, ok = f"dm-wrn-{depth}-{width}", True
        else:
            arch, ok = f"dm-preact-resnet-{depth}", depth == 18
        return dict(arch=arch, supported=ok and isinstance(act, str),
                    options={"activation": act if isinstance(act, str) else str(act)},
                    mean=list(mean) if isinstance(mean, tuple | list) else [mean] * 3,
                    std=list(std) if isinstance(std, tuple | list) else [std] * 3)
    if callee in ("PreActResNet", "PreActResNet18"):
        blocks = _arg(args, kwargs, 1, "num_blocks", [2, 2, 2, 2])
        block = _arg(args, kwargs, 0, "block", "PreActBlock")
        ok = callee == "PreActResNet18" or (blocks == [2, 2, 2, 2] and block == "PreActBlock")
        if isinstance(block, tuple):
            block = block[-1]
        arch = "preact-resnet-18" if ok else f"unsupported: PreActResNet({block}, {blocks})"
        return dict(arch=arch,
                    supported=ok, options={}, mean=mean, std=std)
    if callee in ("ResNet18", "ResNet50", "ResNet"):
        if callee == "ResNet":
            block = _arg(args, kwargs, 0, "block", None)
            blocks = _arg(args, kwargs, 1, "num_blocks", None)
            arch = {("BasicBlock", (2, 2, 2, 2)): "resnet-18",
                    ("Bottleneck", (3, 4, 6, 3)): "resnet-50"}.get(
                        (block, tuple(blocks) if isinstance(blocks, list) else None))
        else:
            arch = {"ResNet18": "resnet-18", "ResNet50": "resnet-50"}[callee]
        return dict(arch=arch or f"ResNet({args})", supported=arch is not None, options={},
                    mean=mean, std=std)
    if callee == "normalize_model" and args and isinstance(args[0], tuple):
        inner = args[0]
        mean, std = list(args[1]), list(args[2])
        if inner[1] in ("pt_models.resnet50", "pt_models.wide_resnet50_2"):
            pretrained_kw = {kk: vv for kk, vv in inner[3].items() if kk != "pretrained"}
            arch = {"pt_models.resnet50": "imagenet-resnet-50",
                    "pt_models.wide_resnet50_2": "imagenet-wrn-50-2"}[inner[1]]
            return dict(arch=arch, supported=not pretrained_kw, options={}, mean=mean, std=std)
        if inner[1] == "timm.create_model" and inner[2] and inner[2][0] in TIMM_ARCHS:
            return dict(arch=TIMM_ARCHS[inner[2][0]], supported=True, options={}, mean=mean,
                        std=std)
        name = inner[2][0] if inner[1] == "timm.create_model" and inner[2] else inner[1]
        return dict(arch=f"unsupported: {name}", supported=False, options={}, mean=mean, std=std)
    if callee == "pt_models.resnet50" and kwargs.get("width_per_group") == 128:
        # Chen2024Data_WRN_50_2: torchvision's WRN-50-2 without a normalisation layer.
        return dict(arch="imagenet-wrn-50-2", supported=True, options={}, mean=None, std=None)
    if callee == "timm.create_model" and args and args[0] in TIMM_REGISTERED:
        # robustbench/model_zoo/architectures/deit.py: a timm DeiT normalised with its default
        # config (timm's IMAGENET_DEFAULT_MEAN / _STD).
        return dict(arch=TIMM_REGISTERED[args[0]], supported=True, options={},
                    mean=list(CONSTANTS["mu"]), std=list(CONSTANTS["sigma"]))
    described = callee
    if callee == "timm.create_model" and args:
        described = f"timm {args[0]}"
    elif args and isinstance(args[0], str):
        described = f"{callee}({args[0]!r})"
    return dict(arch=f"unsupported: {described}", supported=False, options={}, mean=mean, std=std)


def _number(text: Any) -> float | None:
    try:
        return round(float(text) / 100.0, 6)
    except (TypeError, ValueError):
        return None


def build(repo: Path, rev: str) -> dict[str, Any]:
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", rev], capture_output=True,
                            text=True, check=True).stdout.strip()
    date = subprocess.run(["git", "-C", str(repo), "show", "-s", "--format=%cI", commit],
                          capture_output=True, text=True, check=True).stdout.strip()
    models: dict[str, Any] = {}
    for dataset, file in DATASETS.items():
        zoo = Zoo(git_show(repo, commit, f"robustbench/model_zoo/{file}"))
        for threat_var, rows in zoo.entries().items():
            threat = THREATS[threat_var]
            for name, node, n_files in rows:
                callee, args, kwargs, norm = zoo.call_of(node)
                entry = classify(callee, args, kwargs, norm)
                info_text = git_show(repo, commit, f"model_info/{dataset}/{threat}/{name}.json")
                info = json.loads(info_text) if info_text else {}
                entry.update(
                    name=name, dataset=dataset, threat_model=threat,
                    num_classes=NUM_CLASSES[dataset],
                    num_checkpoints=n_files,
                    paper_architecture=info.get("architecture"),
                    eps=info.get("eps"), clean_acc=_number(info.get("clean_acc")),
                    autoattack_acc=_number(info.get("autoattack_acc")),
                    corruptions_acc=_number(info.get("corruptions_acc")),
                    additional_data=info.get("additional_data"), venue=info.get("venue"),
                    link=info.get("link"))
                models[f"{dataset}/{threat}/{name}"] = dict(sorted(entry.items()))
    return {"source": "https://github.com/RobustBench/robustbench", "commit": commit,
            "commit_date": date, "generator": "tools/robustbench_registry.py",
            "models": models}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, help="RobustBench git directory")
    parser.add_argument("--commit", default="HEAD", help="revision to read (default HEAD)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1]
                        / "advjax" / "models" / "robustbench_registry.json")
    args = parser.parse_args(argv)
    registry = build(args.repo, args.commit)
    args.out.write_text(json.dumps(registry, indent=1) + "\n")
    models = registry["models"].values()
    print(f"{len(registry['models'])} entries ({sum(m['supported'] for m in models)} supported) "
          f"from {registry['commit']} ({registry['commit_date']}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
