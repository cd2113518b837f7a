"""Bundle manifest and a loader that verifies before anything runs.

A bundle is a directory (see ARCHITECTURE.md section 4): ONNX graphs, optional quantised
variants and OM files, a copy of the checkpoint, and ``manifest.json`` describing all of it.
Runtimes read every size, name and shape from the manifest, so a manifest that disagrees with
the files next to it would make them fail far from the cause, or worse, silently compute the
wrong thing. ``load_bundle`` therefore refuses a bundle unless the manifest is well formed,
every file is listed with a matching sha256 (nothing missing, nothing extra, nothing
tampered), and each graph's inputs and outputs match the manifest's IO contract.

``io_spec_from_onnx`` is the single definition of that contract: the exporter writes the
manifest from it and the loader checks against it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from genrec.atomic import atomic_file
from genrec.errors import BundleError

if TYPE_CHECKING:  # onnx is imported lazily: reading a manifest must not need it
    import onnx

__all__ = [
    "GRAPH_NAMES",
    "MANIFEST_NAME",
    "SCHEMA",
    "SCHEMA_VERSION",
    "Bundle",
    "build_files_index",
    "io_spec_from_onnx",
    "load_bundle",
    "sha256_file",
    "tool_versions",
    "validate_manifest",
    "write_manifest",
]

SCHEMA = "genrec.bundle"
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
GRAPH_NAMES = ("prefill", "step", "rank")
EXPORTERS = ("dynamo", "torchscript")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# files and hashes


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks so multi-GB weights never sit in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _walk_files(bundle_dir: Path) -> list[str]:
    """Every file under ``bundle_dir`` as a sorted POSIX relative path, except the manifest."""
    out: list[str] = []
    for root, dirs, files in os.walk(bundle_dir):
        dirs.sort()
        rel_root = Path(root).relative_to(bundle_dir)
        for name in files:
            rel = (rel_root / name).as_posix()
            if rel != MANIFEST_NAME:
                out.append(rel)
        # a symlinked directory is not descended into by os.walk; list it so it is refused
        for d in dirs:
            if (Path(root) / d).is_symlink():
                out.append((rel_root / d).as_posix())
    return sorted(out)


def build_files_index(bundle_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Map every file in the bundle (relative POSIX path) to its sha256; manifest.json excluded."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle {bundle_dir}: not a directory")
    return {rel: sha256_file(bundle_dir / rel) for rel in _walk_files(bundle_dir)}


def tool_versions() -> dict[str, str | None]:
    """Versions of the tools that shape a bundle (None when a package is not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for key, dist in (
        ("genrec", "genrec-deploy"),
        ("torch", "torch"),
        ("onnx", "onnx"),
        ("onnxruntime", "onnxruntime"),
        ("onnxscript", "onnxscript"),
    ):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    out["python"] = sys.version.split()[0]
    return out


# --------------------------------------------------------------------------------------------
# the IO contract


def _dtype_name(elem_type: int) -> str:
    """ONNX element type -> numpy dtype name ("int32", "float32", "bool", ...)."""
    import onnx

    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except Exception:  # noqa: BLE001 - types numpy has no name for (e.g. float8)
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _value_spec(vi: onnx.ValueInfoProto, where: str) -> dict[str, Any]:
    t = vi.type
    if t.WhichOneof("value") != "tensor_type":
        raise BundleError(f"{where}: {vi.name!r} is not a tensor (genrec graphs take tensors only)")
    tt = t.tensor_type
    if not tt.HasField("shape"):
        raise BundleError(f"{where}: {vi.name!r} has no static rank; re-export with shapes")
    shape: list[int | str] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            shape.append(d.dim_param)
        else:
            shape.append("?")
    return {"name": vi.name, "dtype": _dtype_name(tt.elem_type), "shape": shape}


def io_spec_from_onnx(
    model_or_path: onnx.ModelProto | str | os.PathLike[str],
) -> dict[str, list[dict[str, Any]]]:
    """The graph's IO contract: ``{"inputs": [...], "outputs": [...]}`` of name/dtype/shape.

    Initializers that are also listed as graph inputs (old IR style) are not part of the
    contract. Dtypes are numpy names, shapes lists of ints and symbolic names (strings).
    External weights are not loaded, so this is cheap even for multi-GB graphs.
    """
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        model, where = model_or_path, "graph"
    else:
        where = str(model_or_path)
        try:
            model = onnx.load(os.fspath(model_or_path), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - protobuf raises assorted types
            raise BundleError(f"{where}: not a readable ONNX file ({e})") from None
    g = model.graph
    inits = {t.name for t in g.initializer}
    return {
        "inputs": [_value_spec(v, where) for v in g.input if v.name not in inits],
        "outputs": [_value_spec(v, where) for v in g.output],
    }


def _contract_diff(expected: dict[str, Any], actual: dict[str, Any]) -> str | None:
    """First difference between a manifest IO spec and a graph's, as a sentence; None if equal."""
    for kind in ("inputs", "outputs"):
        exp, act = expected.get(kind, []), actual[kind]
        exp_names = [e["name"] for e in exp]
        act_names = [a["name"] for a in act]
        if exp_names != act_names:
            return f"{kind} are {act_names} in the graph but {exp_names} in the manifest"
        for e, a in zip(exp, act):
            for field in ("dtype", "shape"):
                if _as_list(e[field]) != _as_list(a[field]):
                    return (
                        f"{kind[:-1]} {e['name']!r} has {field} {a[field]} in the graph "
                        f"but {e[field]} in the manifest"
                    )
    return None


def _as_list(x: Any) -> Any:
    """Normalise tuples to lists so JSON-loaded and freshly built specs compare equal."""
    return list(x) if isinstance(x, tuple) else x


# --------------------------------------------------------------------------------------------
# manifest validation

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema": str,
    "schema_version": int,
    "arch": str,
    "config": dict,
    "num_items": int,
    "max_history": int,
    "capacity": int,
    "topk": int,
    "max_exclude": int,
    "rank_candidates": int,
    "batch_gears": list,
    "opset": int,
    "precision": str,
    "id_map": list,
    "graphs": dict,
    "source_checkpoint": str,
    "files": dict,
    "checks": list,
    "versions": dict,
    "created_at": str,
}


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _type_ok(x: Any, want: type | tuple[type, ...]) -> bool:
    return _is_int(x) if want is int else isinstance(x, want)


def _check_relpath(rel: Any, field: str) -> None:
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"manifest field {field}: expected a relative path, got {rel!r}")
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise BundleError(f"manifest field {field}: {rel!r} must stay inside the bundle")


def _validate_io_list(items: Any, field: str) -> None:
    if not isinstance(items, list):
        raise BundleError(f"manifest field {field}: expected a list, got {type(items).__name__}")
    for i, e in enumerate(items):
        f = f"{field}[{i}]"
        if not isinstance(e, dict):
            raise BundleError(f"manifest field {f}: expected an object")
        for k in ("name", "dtype", "shape"):
            if k not in e:
                raise BundleError(f"manifest field {f}: missing {k!r}")
        if not isinstance(e["name"], str) or not e["name"]:
            raise BundleError(f"manifest field {f}.name: expected a non-empty string")
        if not isinstance(e["dtype"], str) or not e["dtype"]:
            raise BundleError(f"manifest field {f}.dtype: expected a dtype name like 'int32'")
        shape = e["shape"]
        if not isinstance(shape, list) or not all(
            (_is_int(d) and d >= 0) or (isinstance(d, str) and d) for d in shape
        ):
            raise BundleError(
                f"manifest field {f}.shape: expected a list of ints and symbolic names, got {shape!r}"
            )


def _validate_graphs(graphs: Any, field: str) -> None:
    if not isinstance(graphs, dict) or not graphs:
        raise BundleError(f"manifest field {field}: expected a non-empty object of graphs")
    for name, spec in graphs.items():
        f = f"{field}.{name}"
        if name not in GRAPH_NAMES:
            raise BundleError(f"manifest field {f}: unknown graph (expected one of {GRAPH_NAMES})")
        if not isinstance(spec, dict):
            raise BundleError(f"manifest field {f}: expected an object")
        for k in ("file", "exporter", "inputs", "outputs"):
            if k not in spec:
                raise BundleError(f"manifest field {f}: missing {k!r}")
        _check_relpath(spec["file"], f"{f}.file")
        if spec["exporter"] not in EXPORTERS:
            raise BundleError(
                f"manifest field {f}.exporter: {spec['exporter']!r} is not one of {EXPORTERS}"
            )
        _validate_io_list(spec["inputs"], f"{f}.inputs")
        _validate_io_list(spec["outputs"], f"{f}.outputs")


def validate_manifest(d: Any) -> None:
    """Check schema, required keys and their types; raise BundleError naming the bad field.

    Unknown extra keys are allowed (a newer writer may add informational fields), but every
    key a runtime relies on must be present and well typed.
    """
    if not isinstance(d, dict):
        raise BundleError(f"manifest: expected a JSON object, got {type(d).__name__}")
    if d.get("schema") != SCHEMA:
        raise BundleError(f"manifest field schema: expected {SCHEMA!r}, got {d.get('schema')!r}")
    if d.get("schema_version") != SCHEMA_VERSION or not _is_int(d.get("schema_version")):
        raise BundleError(
            f"manifest field schema_version: this genrec reads version {SCHEMA_VERSION}, got "
            f"{d.get('schema_version')!r}; re-export the bundle with this genrec version"
        )
    for key, want in _REQUIRED.items():
        if key not in d:
            raise BundleError(f"manifest: missing required field {key!r}")
        if not _type_ok(d[key], want):
            name = want.__name__ if isinstance(want, type) else want
            raise BundleError(
                f"manifest field {key}: expected {name}, got {type(d[key]).__name__}"
            )
    for key in ("num_items", "max_history", "capacity", "topk", "rank_candidates", "opset"):
        if d[key] < 1:
            raise BundleError(f"manifest field {key}: must be >= 1, got {d[key]}")
    sk = d.get("step_topk")
    if sk is not None and not (_is_int(sk) and 1 <= sk <= d["topk"]):
        raise BundleError(f"manifest field step_topk: expected an int in 1..topk ({d['topk']}), got {sk!r}")
    if d["max_exclude"] < 0:
        raise BundleError(f"manifest field max_exclude: must be >= 0, got {d['max_exclude']}")
    gears = d["batch_gears"]
    if not gears or not all(_is_int(g) and g >= 1 for g in gears) or len(set(gears)) != len(gears):
        raise BundleError(
            f"manifest field batch_gears: expected distinct positive ints, got {gears!r}"
        )
    id_map = d["id_map"]
    if not all(_is_int(x) for x in id_map):
        raise BundleError("manifest field id_map: expected a list of ints")
    if len(id_map) != d["num_items"]:
        raise BundleError(
            f"manifest field id_map: has {len(id_map)} entries but num_items is {d['num_items']}"
        )
    if len(set(id_map)) != len(id_map):
        raise BundleError("manifest field id_map: raw ids must be unique")
    _validate_graphs(d["graphs"], "graphs")
    variants = d.get("variants")
    if variants is not None:
        if not isinstance(variants, dict):
            raise BundleError("manifest field variants: expected an object or null")
        for prec, v in variants.items():
            f = f"variants.{prec}"
            if prec == d["precision"]:
                raise BundleError(f"manifest field {f}: duplicates the base precision")
            if not isinstance(v, dict):
                raise BundleError(f"manifest field {f}: expected an object")
            for k in ("dir", "graphs"):
                if k not in v:
                    raise BundleError(f"manifest field {f}: missing {k!r}")
            _check_relpath(v["dir"], f"{f}.dir")
            _validate_graphs(v["graphs"], f"{f}.graphs")
            if "gate" in v and v["gate"] is not None and not isinstance(v["gate"], dict):
                raise BundleError(f"manifest field {f}.gate: expected an object")
    _check_relpath(d["source_checkpoint"], "source_checkpoint")
    for rel, digest in d["files"].items():
        _check_relpath(rel, "files")
        if not isinstance(digest, str) or not _HEX64.match(digest):
            raise BundleError(f"manifest field files[{rel!r}]: expected a sha256 hex digest")
    if not all(isinstance(c, dict) for c in d["checks"]):
        raise BundleError("manifest field checks: expected a list of objects")
    if "parity" not in d:
        raise BundleError("manifest: missing required field 'parity' (null when not run)")
    if d["parity"] is not None and not isinstance(d["parity"], dict):
        raise BundleError("manifest field parity: expected an object or null")
    try:
        datetime.fromisoformat(d["created_at"])
    except ValueError:
        raise BundleError(
            f"manifest field created_at: {d['created_at']!r} is not an ISO 8601 timestamp"
        ) from None


# --------------------------------------------------------------------------------------------
# the bundle


def _variant_file(variant: dict[str, Any], file: str) -> str:
    """Root-relative path of a variant graph; ``file`` is relative to the variant's ``dir``."""
    d = variant["dir"].rstrip("/")
    return file if file.startswith(d + "/") else f"{d}/{file}"


@dataclass
class Bundle:
    """A loaded bundle: its directory and its (validated) manifest."""

    path: Path
    manifest: dict[str, Any]

    # -- manifest fields ---------------------------------------------------------------------
    @property
    def arch(self) -> str:
        return self.manifest["arch"]

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["config"]

    @property
    def num_items(self) -> int:
        return self.manifest["num_items"]

    @property
    def max_history(self) -> int:
        """T: history length the graphs were exported for."""
        return self.manifest["max_history"]

    @property
    def capacity(self) -> int:
        """C: KV-cache capacity."""
        return self.manifest["capacity"]

    @property
    def topk(self) -> int:
        """K': candidates returned per prefill (the step graph returns ``step_topk``)."""
        return self.manifest["topk"]

    @property
    def step_topk(self) -> int:
        """The step graph's top-K (bundles before it existed: K')."""
        return self.manifest.get("step_topk") or self.manifest["topk"]

    @property
    def max_exclude(self) -> int:
        """X: width of the exclude-ids input."""
        return self.manifest["max_exclude"]

    @property
    def rank_candidates(self) -> int:
        """M: candidates scored by the rank graph."""
        return self.manifest["rank_candidates"]

    @property
    def batch_gears(self) -> list[int]:
        return list(self.manifest["batch_gears"])

    @property
    def id_map(self) -> list[int]:
        """Raw item ids in internal order: internal id ``i + 1`` is raw id ``id_map[i]``."""
        return self.manifest["id_map"]

    @property
    def checkpoint_path(self) -> Path:
        return self.path / self.manifest["source_checkpoint"]

    @property
    def precisions(self) -> list[str]:
        """Base precision first, then the variants' (sorted)."""
        return [self.manifest["precision"], *sorted(self.manifest.get("variants") or {})]

    # -- graphs ------------------------------------------------------------------------------
    def _graph_entry(self, name: str, precision: str) -> tuple[str, dict[str, Any]]:
        """(root-relative file, spec) for one graph at one precision."""
        if precision == self.manifest["precision"]:
            graphs = self.manifest["graphs"]
            spec = graphs.get(name)
            rel = spec["file"] if spec is not None else ""
        else:
            variants = self.manifest.get("variants") or {}
            if precision not in variants:
                raise BundleError(
                    f"bundle {self.path}: no {precision!r} variant (available: "
                    f"{', '.join(self.precisions)})"
                )
            graphs = variants[precision]["graphs"]
            spec = graphs.get(name)
            rel = _variant_file(variants[precision], spec["file"]) if spec is not None else ""
        if spec is None:
            raise BundleError(
                f"bundle {self.path}: no {name!r} graph at {precision} (available: "
                f"{', '.join(sorted(graphs))})"
            )
        return rel, spec

    def graph_path(self, name: str, precision: str = "fp32") -> Path:
        """Path of graph ``name`` ("prefill", "step", "rank") at ``precision``."""
        return self.path / self._graph_entry(name, precision)[0]

    def graph_spec(self, name: str, precision: str = "fp32") -> dict[str, Any]:
        """Manifest entry of a graph: file, exporter, inputs and outputs (name/dtype/shape)."""
        return self._graph_entry(name, precision)[1]

    def graph_files(self) -> list[tuple[str, str, str]]:
        """Every graph as (precision, name, root-relative file)."""
        out = []
        for prec in self.precisions:
            graphs = (
                self.manifest["graphs"]
                if prec == self.manifest["precision"]
                else self.manifest["variants"][prec]["graphs"]
            )
            out.extend((prec, name, self._graph_entry(name, prec)[0]) for name in graphs)
        return out

    # -- verification ------------------------------------------------------------------------
    def verify(self) -> None:
        """Check files (complete, nothing extra, sha256) and each graph's IO contract."""
        where = f"bundle {self.path}"
        listed: dict[str, str] = self.manifest["files"]
        present = set(_walk_files(self.path))
        for rel in sorted(listed):
            if rel not in present:
                raise BundleError(
                    f"{where}: file {rel!r} is listed in manifest.json but missing; "
                    "the bundle is incomplete, re-export it"
                )
        extra = sorted(present - set(listed))
        if extra:
            raise BundleError(
                f"{where}: unexpected file {extra[0]!r} not listed in manifest.json"
                + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                + "; remove it or re-export the bundle"
            )
        for rel in [self.manifest["source_checkpoint"]] + [f for _, _, f in self.graph_files()]:
            if rel not in listed:
                raise BundleError(f"{where}: file {rel!r} is referenced but not listed in files")
        for rel in sorted(listed):
            p = self.path / rel
            if p.is_symlink() or not p.is_file():
                raise BundleError(f"{where}: {rel!r} must be a regular file, not a link or folder")
            actual = sha256_file(p)
            if actual != listed[rel]:
                raise BundleError(
                    f"{where}: file {rel!r} sha256 mismatch (manifest {listed[rel][:12]}..., "
                    f"actual {actual[:12]}...): tampered with or corrupted; re-export the bundle"
                )
        self.verify_io_contract()

    def verify_io_contract(self) -> None:
        """Each graph's ONNX inputs/outputs (names, dtypes, shapes) equal the manifest's."""
        for prec, name, rel in self.graph_files():
            spec = self.graph_spec(name, prec)
            actual = io_spec_from_onnx(self.path / rel)
            diff = _contract_diff(spec, actual)
            if diff:
                raise BundleError(
                    f"bundle {self.path}: IO contract mismatch in {rel!r} ({name}, {prec}): "
                    f"{diff}; re-export the bundle"
                )


def _read_manifest(bundle_dir: Path) -> dict[str, Any]:
    mpath = bundle_dir / MANIFEST_NAME
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle {bundle_dir}: not a directory")
    if not mpath.is_file():
        raise BundleError(
            f"bundle {bundle_dir}: {MANIFEST_NAME} missing; not a genrec bundle (export one "
            "with genrec-export)"
        )
    try:
        with open(mpath, encoding="utf-8") as fh:
            d = json.load(fh)
    except json.JSONDecodeError as e:
        raise BundleError(
            f"bundle {bundle_dir}: {MANIFEST_NAME} is not valid JSON (line {e.lineno}, "
            f"column {e.colno}: {e.msg})"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"bundle {bundle_dir}: cannot read {MANIFEST_NAME} ({e})") from None
    try:
        validate_manifest(d)
    except BundleError as e:
        raise BundleError(f"bundle {bundle_dir}: {MANIFEST_NAME}: {e}") from None
    return d


def load_bundle(path: str | os.PathLike[str], verify: bool = True) -> Bundle:
    """Read and validate ``<path>/manifest.json``; with ``verify`` also check every file.

    ``verify=False`` skips hashing and the IO-contract check (for tools that only read the
    manifest); the manifest schema is always validated.
    """
    bundle = Bundle(path=Path(path), manifest=_read_manifest(Path(path)))
    if verify:
        bundle.verify()
    return bundle


def write_manifest(bundle_dir: str | os.PathLike[str], manifest: dict[str, Any]) -> Path:
    """Fill ``files`` from the directory, validate, check the IO contract, write atomically.

    ``schema``, ``schema_version``, ``created_at`` (now, UTC) and ``versions`` are filled in
    when absent. The caller's dict is not modified. Returns the manifest path.
    """
    bundle_dir = Path(bundle_dir)
    d = dict(manifest)
    d.setdefault("schema", SCHEMA)
    d.setdefault("schema_version", SCHEMA_VERSION)
    d.setdefault("created_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    d.setdefault("versions", tool_versions())
    d.setdefault("checks", [])
    d.setdefault("parity", None)
    d["files"] = build_files_index(bundle_dir)
    validate_manifest(d)
    bundle = Bundle(path=bundle_dir, manifest=d)
    for rel in [d["source_checkpoint"]] + [f for _, _, f in bundle.graph_files()]:
        if rel not in d["files"]:
            raise BundleError(f"bundle {bundle_dir}: {rel!r} is referenced but does not exist")
    bundle.verify_io_contract()
    out = bundle_dir / MANIFEST_NAME
    with atomic_file(out, "w") as fh:
        json.dump(d, fh, sort_keys=True, indent=2)
        fh.write("\n")
    return out
