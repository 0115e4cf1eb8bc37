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


def _lookup(pkg: griffe.Module, path: str) -> Any | None:
    if path == pkg.path:
        return pkg
    if not path.startswith(pkg.path + "."):
        return None
    try:
        return pkg[path[len(pkg.path) + 1:]]
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _candidates(name: str, obj: griffe.Object) -> list[str]:
    out = [name]
    scope = obj if obj.is_module else obj.module
    while scope is not None:
        out.append(f"{scope.path}.{name}")
        if obj.parent is not None and not obj.is_module and obj.parent.is_class:
            out.append(f"{obj.parent.path}.{name}")
        scope = scope.parent
    return out


def _target(obj: Any) -> str:
    """The identifier the docs register for ``obj``: its public path if it is re-exported."""
    try:
        return obj.path
    except Exception:  # pragma: no cover - defensive
        return str(obj)


class SphinxRoles(griffe.Extension):
    """Rewrites ``:role:`name``` in every advjax docstring into an autorefs link."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name != ROOT:
            return
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
        role, tilde, name = match.groups()
        name = name.strip().removesuffix("()")
        label = name.rsplit(".", 1)[-1] if tilde else name
        for path in _candidates(name, node):
            found = _lookup(pkg, path)
            if found is not None:
                return f"[`{label}`][{_target(found)}]"
        if name.split(".")[0] == ROOT:
            return f"[`{label}`][{name}]"  # unresolved advjax name: the strict build fails here
        if "." in name and name.split(".")[0] in {"jax", "flax", "optax", "numpy", "np", "jnp",
                                                 "orbax", "chex", "scipy", "tfds"}:
            return f"`{label}`"
        # a bare name that is not an advjax object: keep it a (failing) reference
        return f"[`{label}`][{name}]"
