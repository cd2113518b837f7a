"""Backend registry: built-ins, ``register_backend``, and the ``genrec.backends`` entry points.

A third-party package (the Ascend backend, say) plugs in without touching the loop::

    [project.entry-points."genrec.backends"]
    ascend = "genrec_ascend:AscendBackend"

The entry point is loaded only when that backend is asked for. A factory is called as
``factory(bundle, **options)`` where ``bundle`` is a verified ``Bundle`` (or, for a path that
is a file, the path itself: the torch backend accepts a bare checkpoint).
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from genrec.bundle import Bundle, load_bundle
from genrec.errors import ConfigError, GenrecError, MissingBackend

from .base import Backend

ENTRY_POINT_GROUP = "genrec.backends"

# name -> factory, or "module:attribute" imported on first use (keeps `import genrec` light)
_REGISTRY: dict[str, Callable[..., Backend] | str] = {
    "torch": "genrec.runtimes.pytorch:TorchBackend",
    "onnxruntime": "genrec.runtimes.onnxrt:OrtBackend",
}


def register_backend(name: str, factory: Callable[..., Backend] | str) -> None:
    """Make ``get_backend(name, ...)`` call ``factory(bundle, **options)``; replaces a previous one."""
    _REGISTRY[name] = factory


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_backends() -> list[str]:
    """Registered and entry-point backends, sorted."""
    return sorted(set(_REGISTRY) | set(_entry_points()))


def _resolve(name: str) -> Callable[..., Backend]:
    factory = _REGISTRY.get(name)
    if factory is None:
        ep = _entry_points().get(name)
        if ep is None:
            raise GenrecError(f"unknown backend {name!r}; available: {', '.join(available_backends())}")
        factory = ep.value
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise MissingBackend(f"backend {name!r} could not be loaded from {factory} ({e}); "
                                 "install the package that provides it") from None
        factory = _REGISTRY[name] = obj
    return factory


def get_backend(name: str, bundle: Bundle | str | os.PathLike[str], **options: Any) -> Backend:
    """Open ``bundle`` (a Bundle, a bundle directory, or for torch a checkpoint) with backend ``name``.

    Options are the backend's keyword arguments (``provider``, ``precision``, ``device``,
    ``threads``, ...); one it does not take is a ConfigError listing those it does.
    """
    factory = _resolve(name)
    if not isinstance(bundle, Bundle):
        path = Path(bundle)
        if not path.exists():
            raise GenrecError(f"{path}: no such bundle directory or checkpoint")
        bundle = load_bundle(path) if path.is_dir() else path
    try:
        inspect.signature(factory).bind(bundle, **options)
    except TypeError:
        params = [p.name for p in list(inspect.signature(factory).parameters.values())[1:]
                  if p.kind is inspect.Parameter.KEYWORD_ONLY]
        bad = sorted(set(options) - set(params))
        raise ConfigError(f"backend {name!r} takes no option {', '.join(map(repr, bad)) or '(?)'}; "
                          f"its options: {', '.join(params) or 'none'}") from None
    return factory(bundle, **options)
