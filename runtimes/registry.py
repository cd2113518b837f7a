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
from genrec.errors import BundleError, ConfigError, GenrecError, MissingBackend

from .base import Backend

ENTRY_POINT_GROUP = "genrec.backends"

# name -> factory, or "module:attribute" imported on first use (keeps `import genrec` light)
_REGISTRY: dict[str, Callable[..., Backend] | str] = {
    "torch": "genrec.runtimes.pytorch:TorchBackend",
    "torch.compile": "genrec.runtimes.pytorch:CompiledTorchBackend",  # the benchmarks' yardstick
    "onnxruntime": "genrec.runtimes.onnxrt:OrtBackend",
    "ascend": "genrec.runtimes.ascend:AscendBackend",  # imports acl (pyACL) only when created
    "openvino": "genrec.runtimes.openvino_backend:OpenVINOBackend",  # optional: pip install openvino
}


def split_backend(spec: str) -> tuple[str, str | None]:
    """``BACKEND[:VARIANT]`` -> (backend, variant or None): the one grammar that names a backend
    and a bundle variant everywhere (``genrec-run --backend``, ``genrec parity``, ``genrec bench
    --backends``, Ray scoring): ``onnxruntime``, ``onnxruntime:int8-static``, ``ascend:fp16``.
    Whether the variant exists is the bundle's to say (``resolve_variant``)."""
    name, sep, variant = str(spec).strip().partition(":")
    name, variant = name.strip(), variant.strip()
    if not name or (sep and not variant) or ":" in variant:
        raise ConfigError(f"backend {spec!r}: expected BACKEND[:VARIANT], e.g. onnxruntime or onnxruntime:int8-static")
    return name, variant or None


def resolve_variant(bundle: Bundle, variant: str | None) -> str | None:
    """The bundle precision ``variant`` names: None (or the base precision) is the base;
    ``int8`` is an alias only while exactly one int8 variant exists; anything else must be
    one of the bundle's variants. BundleError listing the available ones otherwise."""
    precisions = bundle.precisions
    if variant is None or variant == precisions[0]:
        return None
    if variant in precisions:
        return variant
    if variant == "int8":
        int8 = [p for p in precisions if p.startswith("int8")]
        if len(int8) == 1:
            return int8[0]
        if int8:
            raise BundleError(f"bundle {bundle.path}: 'int8' is ambiguous: it has {' and '.join(int8)}; name one "
                              f"(onnxruntime:{int8[0]})")
    raise BundleError(f"bundle {bundle.path}: no {variant!r} variant (available: {', '.join(precisions)}); "
                      "add one with `genrec quantize`")


def resolve_backend_variant(name: str, bundle: Bundle, variant: str | None) -> str:
    """The precision ``name:variant`` opens on ``bundle``. A backend whose variants are its own
    (a ``resolve_variant(bundle, variant)`` on its factory: ascend's are its OM build
    precisions, fp32/fp16/mixed) says; any other resolves against the bundle's ONNX variants."""
    own = getattr(_resolve(name), "resolve_variant", None)
    if callable(own):
        return own(bundle, variant)
    return resolve_variant(bundle, variant) or bundle.precisions[0]


def precision_option(name: str, bundle: Bundle, precision: str) -> dict[str, str]:
    """The keyword that opens backend ``name`` at ``precision`` (``resolve_backend_variant``'s
    answer): passed to any backend that takes a ``precision``; left out at the bundle's base
    precision for one that does not (torch serves model.pt), so the one rule serves run,
    parity and bench alike."""
    if precision == bundle.precisions[0] and "precision" not in inspect.signature(_resolve(name)).parameters:
        return {}
    return {"precision": precision}


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


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def parse_backend_options(name: str, pairs: dict[str, str]) -> dict[str, Any]:
    """``--backend-option KEY=VALUE`` strings -> keyword arguments of backend ``name``'s factory,
    each value parsed as its annotation says (bool, int, float, str; ``none`` for an optional
    one). A key the factory does not take, or a value that does not parse, is a ConfigError
    naming the backend's options: each backend validates its own keys, the CLI knows none."""
    factory = _resolve(name)
    try:
        params = inspect.signature(factory, eval_str=True).parameters
    except (NameError, TypeError, ValueError):  # annotations that do not evaluate: strings as given
        params = inspect.signature(factory).parameters
    takes = {p.name: p for p in list(params.values())[1:] if p.kind is inspect.Parameter.KEYWORD_ONLY}
    out: dict[str, Any] = {}
    for key, text in pairs.items():
        p = takes.get(key)
        if p is None:
            raise ConfigError(f"backend {name!r} takes no option {key!r}; its options: {', '.join(takes) or 'none'}")
        out[key] = _coerce(name, key, text, p.annotation)
    return out


def _coerce(name: str, key: str, text: str, annotation: Any) -> Any:
    kinds = set(getattr(annotation, "__args__", None) or (annotation,))
    if type(None) in kinds and text.lower() in ("none", ""):
        return None
    low = text.strip().lower()
    if bool in kinds:
        if low in _TRUE | _FALSE:
            return low in _TRUE
        raise ConfigError(f"backend {name!r} option {key}={text!r}: expected true or false")
    for kind in (int, float):
        if kind in kinds:
            try:
                return kind(text)
            except ValueError:
                raise ConfigError(f"backend {name!r} option {key}={text!r}: expected {kind.__name__}") from None
    if str in kinds or annotation is inspect.Parameter.empty:
        return text
    raise ConfigError(f"backend {name!r} option {key} cannot be given as KEY=VALUE (it takes {annotation})")


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
