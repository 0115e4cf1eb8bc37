"""Griffe extension: Sphinx-style roles in docstrings become cross-references of the docs site.

advjax docstrings cite other objects as ``:func:`name```, ``:class:`~advjax.train.TrainConfig```,
``:mod:`advjax.train.adversarial``` etc. This extension rewrites every role that names an advjax
object into a Markdown autorefs link ``[`label`][target]``: ``target`` is the name resolved like
Python would from the docstring's module (the name itself, then relative to the enclosing module
and packages, then to the package root). A name that resolves to nothing is still emitted as a
link, so ``mkdocs build --strict`` fails on it: broken cross-references break the build. Roles
naming other libraries (``jax.vmap``) are rendered as code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(func|class|mod|meth|attr|data|exc|obj|const):`(~?)([^`]+)`")
ROOT = "advjax"


MODULES: set[str] = set()
PAGES = ("attacks", "lipschitz", "models", "data", "train", "metrics", "explain", "parallel",
         "pipeline")


def _lookup(pkg: griffe.Module, path: str) -> Any | None:
    if path == pkg.path:
        return pkg
    if not path.startswith(pkg.path + "."):
        return None
    node: Any = pkg
    for part in path[len(pkg.path) + 1:].split("."):
        try:
            node = node.members[part] if part in node.members else None
        except griffe.AliasResolutionError:
            return None
        if node is None:
            return None
    return node


def _canonical(obj: Any) -> str | None:
    try:
        return obj.final_target.path if obj.is_alias else obj.path
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _public_map(pkg: griffe.Module) -> dict[str, str]:
    """Canonical path → the path under which the API pages render the object (and modules)."""
    public: dict[str, str] = {pkg.path: pkg.path}
    MODULES.add(pkg.path)
    for page in PAGES:
        mod = pkg.members.get(page)
        if mod is None:
            continue
        public[mod.path] = mod.path
        MODULES.add(mod.path)
        exports = None if mod.exports is None else {str(e) for e in mod.exports}
        for name, member in mod.members.items():
            if member.is_alias and _canonical(member) is None:
                continue  # an import from outside the loaded packages (e.g. __future__)
            if member.is_module:
                if not name.startswith("_"):
                    public[member.path] = member.path
                    MODULES.add(member.path)
                if exports is not None and name in exports and name in member.members:
                    # a function exported under its module's name (advjax.attacks.pgd): the
                    # page renders it at its canonical path, next to the module
                    shadow = member.members[name]
                    public[shadow.path] = shadow.path
                continue
            if name.startswith("_") or (exports is not None and name not in exports):
                continue
            if exports is None and member.is_alias:
                continue
            canonical = _canonical(member)
            if canonical is not None:
                public.setdefault(canonical, f"{mod.path}.{name}")
        if page == "metrics" and "plots" in mod.members:
            for name, member in mod.members["plots"].members.items():
                if not name.startswith("_") and not member.is_alias:  # defined in plots.py
                    public.setdefault(member.path, member.path)
    return public


def _public(canonical: str, public: dict[str, str]) -> str | None:
    """The rendered path of ``canonical`` or of a member of a rendered class."""
    if canonical in public:
        return public[canonical]
    head, _, tail = canonical.rpartition(".")
    while head:
        if head in MODULES:
            return None  # a module member that is not exported: no page of its own
        if head in public:
            return f"{public[head]}.{tail}"
        head, _, rest = head.rpartition(".")
        tail = f"{rest}.{tail}"
    return None


def _candidates(name: str, obj: Any) -> list[str]:
    out = [name]
    if obj.is_class:
        out.append(f"{obj.path}.{name}")
    elif obj.parent is not None and obj.parent.is_class:
        out.append(f"{obj.parent.path}.{name}")
    scope = obj if obj.is_module else obj.module
    while scope is not None:
        out.append(f"{scope.path}.{name}")
        scope = scope.parent
    return out


class SphinxRoles(griffe.Extension):
    """Rewrites ``:role:`name``` in every advjax docstring into an autorefs link."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name != ROOT:
            return
        self._public = _public_map(pkg)
        self._walk(pkg, pkg, set())

    def _walk(self, node: Any, pkg: griffe.Module, seen: set[str]) -> None:
        if node.path in seen or node.is_alias:
            return
        seen.add(node.path)
        if node.docstring is not None:
            node.docstring.value = ROLE.sub(lambda m: self._link(m, node, pkg),
                                            node.docstring.value)
        for member in list(node.members.values()):
            if not member.is_alias:
                self._walk(member, pkg, seen)

    def _link(self, match: re.Match, node: Any, pkg: griffe.Module) -> str:
        _, tilde, name = match.groups()
        name = name.strip().removesuffix("()")
        label = name.rsplit(".", 1)[-1] if tilde else name
        for path in _candidates(name, node):
            found = _lookup(pkg, path)
            if found is None:
                continue
            canonical = _canonical(found)
            if canonical is None or not canonical.startswith(ROOT + "."):
                return f"`{label}`"  # an import of another library (e.g. a jax function)
            target = _public(canonical, self._public)
            # a private helper exists but has no page: plain code, not a broken link
            return f"`{label}`" if target is None else f"[`{label}`][{target}]"
        if "." in name and name.split(".")[0] != ROOT:
            return f"`{label}`"  # another library's name (jax.vmap, pickle.UnpicklingError)
        return f"[`{label}`][{name}]"  # names nothing: the strict build fails on this link
