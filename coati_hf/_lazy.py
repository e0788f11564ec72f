"""Lazy attribute access for packages: ``import coati_hf`` must not import torch or trl."""

from __future__ import annotations

import importlib


def install_lazy_attributes(namespace: dict, attributes: dict[str, str]) -> None:
    """Give the package whose globals are ``namespace`` a module ``__getattr__``/``__dir__`` that
    imports ``attributes[name]`` (a module path, absolute or relative to the package) on first
    access to ``name`` and caches the value in the package."""
    package = namespace["__name__"]

    def __getattr__(name: str):
        module = attributes.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(attributes) | {key for key in namespace if not key.startswith("_")})

    namespace["__getattr__"] = __getattr__
    namespace["__dir__"] = __dir__
    namespace.setdefault("__all__", sorted(attributes))
