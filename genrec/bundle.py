"""Open a bundle only once everything in it agrees: manifest, files, graphs and checkpoint.

A bundle is a directory (ARCHITECTURE.md §4): ONNX graphs, optional variants and target
builds, the source checkpoint ``model.pt``, and ``manifest.json`` (``genrec.manifest``, the
typed ``Manifest``). Runtimes take every size, name and shape from the manifest, and
``manifest.json`` is the one file a sha256 list cannot protect: it *is* the list. So opening a
bundle (``load_bundle``) cross-checks the manifest against what it describes, and refuses by
name anything that disagrees:

- files: every file listed with a matching sha256, nothing missing, nothing extra, no links;
- graphs: each graph's IO equals the manifest's, and every size the graphs carry equals the
  manifest's dims (``manifest says X=256, step.onnx exclude_ids has 10``): T, C, K', step K, X,
  M, d, the item table's N + 1 rows, the cache shapes, and the opset;
- checkpoint: arch, config and id map equal model.pt's, model.pt's cache shapes equal the
  graphs', and its item embeddings are the ones inside prefill.onnx (another valid checkpoint
  swapped in, hashes updated, is refused).

The bundle digest (``Bundle.digest``, the sha256 of the manifest's canonical content) is
computed here on every open, printed by ``genrec inspect`` and pinned with
``--expect-digest``; an edited manifest gets a new digest *and* still has to pass the checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genrec.atomic import atomic_file
from genrec.errors import BundleError, CheckpointError
from genrec.manifest import (GRAPH_NAMES, SCHEMA, SCHEMA_VERSION, Dims, GraphSpec, Manifest, TargetBuild,
                             TensorSpec, Variant, is_sha256)

if TYPE_CHECKING:  # onnx and torch are imported lazily: reading a manifest needs neither
    import onnx

    from genrec.checkpoint import Checkpoint

__all__ = [
    "GRAPH_NAMES", "MANIFEST_NAME", "SCHEMA", "SCHEMA_VERSION", "Bundle", "Dims", "GraphSpec", "Manifest",
    "TargetBuild", "TensorSpec", "Variant", "build_files_index", "io_spec_from_onnx", "load_bundle",
    "sha256_file", "tool_versions", "validate_manifest", "write_manifest",
]

MANIFEST_NAME = "manifest.json"
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
        out.extend((rel_root / d).as_posix() for d in dirs if (Path(root) / d).is_symlink())
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
    for key, dist in (("genrec", "genrec-deploy"), ("torch", "torch"), ("onnx", "onnx"),
                      ("onnxruntime", "onnxruntime"), ("onnxscript", "onnxscript")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    out["python"] = sys.version.split()[0]
    return out


# --------------------------------------------------------------------------------------------
# what a graph file says about itself


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


def _load_onnx(model_or_path: onnx.ModelProto | str | os.PathLike[str]) -> tuple[onnx.ModelProto, str]:
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path, "graph"
    where = str(model_or_path)
    try:
        return onnx.load(os.fspath(model_or_path), load_external_data=False), where
    except Exception as e:  # noqa: BLE001 - protobuf raises assorted types
        raise BundleError(f"{where}: not a readable ONNX file ({e})") from None


def io_spec_from_onnx(model_or_path: onnx.ModelProto | str | os.PathLike[str]) -> dict[str, list[dict[str, Any]]]:
    """The graph's IO contract: ``{"inputs": [...], "outputs": [...]}`` of name/dtype/shape.

    Initializers that are also listed as graph inputs (old IR style) are not part of the
    contract. External weights are not loaded, so this is cheap even for multi-GB graphs.
    """
    model, where = _load_onnx(model_or_path)
    return _io(model, where)


def _io(model: onnx.ModelProto, where: str) -> dict[str, list[dict[str, Any]]]:
    g = model.graph
    inits = {t.name for t in g.initializer}
    return {"inputs": [_value_spec(v, where) for v in g.input if v.name not in inits],
            "outputs": [_value_spec(v, where) for v in g.output]}


def _opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _item_table(model: onnx.ModelProto, d_model: int):
    """The initializer holding the item table: 2-D float, d columns, the most rows (the
    exporter keeps torch's name ``model.item_emb.weight``, which wins when present)."""
    import onnx

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
              onnx.TensorProto.DOUBLE}
    named = [t for t in model.graph.initializer if t.name.endswith("item_emb.weight")]
    if named:
        return named[0]
    tables = [t for t in model.graph.initializer
              if len(t.dims) == 2 and t.dims[1] == d_model and t.data_type in floats]
    return max(tables, key=lambda t: t.dims[0], default=None)


def _contract_diff(expected: dict[str, Any], actual: dict[str, Any]) -> str | None:
    """First difference between a manifest IO spec and a graph's, as a sentence; None if equal."""
    for kind in ("inputs", "outputs"):
        exp, act = expected.get(kind, []), actual[kind]
        exp_names, act_names = [e["name"] for e in exp], [a["name"] for a in act]
        if exp_names != act_names:
            return f"{kind} are {act_names} in the graph but {exp_names} in the manifest"
        for e, a in zip(exp, act):
            for fld in ("dtype", "shape"):
                if _norm(e[fld]) != _norm(a[fld]):
                    return (f"{kind[:-1]} {e['name']!r} has {fld} {a[fld]} in the graph "
                            f"but {e[fld]} in the manifest")
    return None


def _norm(x: Any) -> Any:
    return list(x) if isinstance(x, (list, tuple)) else x


# --------------------------------------------------------------------------------------------
# the sizes a graph must carry, from the manifest's dims


def expected_io(m: Manifest, graph: str) -> tuple[dict[str, tuple[str, tuple]], dict[str, tuple[str, tuple]]]:
    """(inputs, outputs) of ``graph`` as name -> (label, shape without batch), from the dims.

    The label names the dim in a refusal (``X=256``), so a message says which manifest value
    the graph contradicts."""
    d, ts = m.dims, m.dims.needs_timestamps
    cache = {c.name: c.shape for c in m.cache}
    past = {f"past_{n}": (f"cache {n}", s) for n, s in cache.items()}
    present = {f"present_{n}": (f"cache {n}", s) for n, s in cache.items()}
    user = {"user_emb": ("d", (d.d_model,))}
    one = ("", ())
    if graph == "prefill":
        ins = {"item_ids": ("T", (d.max_history,)), "lengths": one,
               **({"timestamps": ("T", (d.max_history,)), "request_time": one} if ts else {}),
               "exclude_ids": ("X", (d.max_exclude,))}
        outs = {**user, "topk_ids": ("K'", (d.topk,)), "topk_scores": ("K'", (d.topk,)), "log_z": one, **present}
    elif graph == "step":
        ins = {"new_item": one, "position": one, **({"timestamp": one} if ts else {}),
               "exclude_ids": ("X", (d.max_exclude,)), **past}
        outs = {**user, "topk_ids": ("step K", (d.step_topk,)), "topk_scores": ("step K", (d.step_topk,)),
                "log_z": one, **present}
    else:
        ins = {"candidates": ("M", (d.rank_candidates,)), "position": one, **({"timestamp": one} if ts else {}),
               **past}
        outs = {"scores": ("M", (d.rank_candidates,))}
    return ins, outs


def _check_dims(m: Manifest, graph: str, rel: str, io: dict[str, list[dict[str, Any]]]) -> None:
    """Every size the graph's IO carries equals the manifest's; BundleError naming both."""
    exp_in, exp_out = expected_io(m, graph)
    for kind, exp in (("inputs", exp_in), ("outputs", exp_out)):
        actual = {v["name"]: v["shape"] for v in io[kind]}
        if set(actual) != set(exp):
            missing, extra = sorted(set(exp) - set(actual)), sorted(set(actual) - set(exp))
            raise BundleError(f"manifest says {m.arch} with {len(m.cache)} cache tensors, so {rel} should have "
                              f"{kind} {sorted(exp)}; missing {missing}, unexpected {extra}")
        for name, (label, shape) in exp.items():
            got = actual[name]
            if not got or not isinstance(got[0], str):
                raise BundleError(f"{rel} {name} has a fixed batch axis {got[:1]}; batch must be the one "
                                  "dynamic axis")
            if list(got[1:]) != list(shape):
                said = (f"{label}={shape[0]}" if len(shape) == 1 and not label.startswith("cache")
                        else f"{label} {list(shape)}" if label else f"shape {list(shape)}")
                has = got[1] if len(got) == 2 and len(shape) == 1 else list(got[1:])
                raise BundleError(f"manifest says {said}, {rel} {name} has {has}")


# --------------------------------------------------------------------------------------------
# the bundle


@dataclass
class Bundle:
    """An opened bundle: its directory and its typed manifest (``load_bundle`` verifies it)."""

    path: Path
    manifest: Manifest
    _checkpoint: Checkpoint | None = field(default=None, repr=False)

    # -- what runtimes read ------------------------------------------------------------------
    @property
    def dims(self) -> Dims:
        return self.manifest.dims

    @property
    def digest(self) -> str:
        """sha256 of the manifest's canonical content (``Manifest.digest``): computed, not stored."""
        return self.manifest.digest

    @property
    def arch(self) -> str:
        return self.manifest.arch

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.config

    @property
    def id_map(self) -> list[int]:
        """Raw item ids in internal order: internal id ``i + 1`` is raw id ``id_map[i]``."""
        return list(self.manifest.id_map)

    @property
    def checkpoint_path(self) -> Path:
        return self.path / self.manifest.source_checkpoint

    @property
    def precisions(self) -> list[str]:
        return self.manifest.precisions

    def graph_path(self, name: str, precision: str | None = None) -> Path:
        """Path of graph ``name`` ("prefill", "step", "rank") at ``precision`` (default: base)."""
        return self.path / self._entry(name, precision)[0]

    def graph_spec(self, name: str, precision: str | None = None) -> GraphSpec:
        """The manifest's entry for one graph: file, exporter, inputs and outputs."""
        return self._entry(name, precision)[1]

    def _entry(self, name: str, precision: str | None) -> tuple[str, GraphSpec]:
        try:
            return self.manifest.graph_entry(name, precision)
        except BundleError as e:
            raise BundleError(f"bundle {self.path}: {e}") from None

    def checkpoint(self) -> Checkpoint:
        """The source checkpoint, loaded once (``weights_only``) and kept for this bundle."""
        if self._checkpoint is None:
            from genrec.checkpoint import load_checkpoint

            self._checkpoint = load_checkpoint(self.checkpoint_path)
        return self._checkpoint

    def release_checkpoint(self) -> None:
        """Drop the loaded checkpoint (a backend that does not run torch needs no second copy
        of the weights in memory); ``checkpoint()`` loads it again if asked."""
        self._checkpoint = None

    # -- verification ------------------------------------------------------------------------
    def verify(self) -> None:
        """Files, then graphs and target builds against the manifest, then the manifest
        against model.pt."""
        self.verify_files()
        tables = self.verify_graphs()
        self.verify_targets()
        self.verify_checkpoint(tables)

    def verify_targets(self) -> None:
        """Each target build (Ascend OM, ...) agrees with the bundle: built for its gears,
        for graphs it has, and from the ONNX files it holds now (``info.built_from``: the
        sha256 of each file the converter read), so an NPU host never runs an OM of other graphs."""
        m = self.manifest
        for target, builds in m.targets.items():
            for tb in builds:
                where = f"bundle {self.path}: target {target} {tb.soc}/{tb.precision}"
                if tuple(tb.gears) != tuple(m.dims.batch_gears):
                    raise BundleError(f"{where}: built for gears {list(tb.gears)}, the bundle has "
                                      f"{list(m.dims.batch_gears)}")
                for graph in tb.graphs:
                    if graph not in m.graphs:
                        raise BundleError(f"{where}: a build of unknown graph {graph!r}")
                    built = (tb.info.get("built_from") or {}).get(graph)
                    if built is not None and built != m.files.get(m.graphs[graph].file):
                        raise BundleError(f"{where}: {tb.graphs[graph]} was built from another "
                                          f"{m.graphs[graph].file} (sha256 differs); convert again")

    def verify_files(self) -> None:
        """Every listed file present, a regular file, with its sha256; nothing unlisted."""
        where, m = f"bundle {self.path}", self.manifest
        listed = m.files
        present = set(_walk_files(self.path))
        for rel in sorted(listed):
            if rel not in present:
                raise BundleError(f"{where}: file {rel!r} is listed in manifest.json but missing; "
                                  "the bundle is incomplete, re-export it")
        extra = sorted(present - set(listed))
        if extra:
            raise BundleError(f"{where}: unexpected file {extra[0]!r} not listed in manifest.json"
                              + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                              + "; remove it or re-export the bundle")
        for rel in m.referenced_files():
            if rel not in listed:
                raise BundleError(f"{where}: file {rel!r} is referenced but not listed in files")
        for rel in sorted(listed):
            p = self.path / rel
            if p.is_symlink() or not p.is_file():
                raise BundleError(f"{where}: {rel!r} must be a regular file, not a link or folder")
            actual = sha256_file(p)
            if actual != listed[rel]:
                raise BundleError(f"{where}: file {rel!r} sha256 mismatch (manifest {listed[rel][:12]}..., "
                                  f"actual {actual[:12]}...): tampered with or corrupted; re-export the bundle")

    def verify_graphs(self) -> dict[str, Any]:
        """Each graph's IO equals the manifest's, its sizes equal the dims, its opset the
        manifest's, and the base prefill graph holds an (N + 1, d) item table. Returns the
        base graphs' item tables (TensorProto, data not loaded) for the checkpoint check."""
        m, tables = self.manifest, {}
        for prec, name, rel in m.graph_files():
            model, _ = _load_onnx(self.path / rel)
            io = _io(model, str(self.path / rel))
            diff = _contract_diff(self.manifest.graph_entry(name, prec)[1].io(), io)
            if diff:
                raise BundleError(f"bundle {self.path}: IO contract mismatch in {rel!r} ({name}, {prec}): "
                                  f"{diff}; re-export the bundle")
            try:
                _check_dims(m, name, rel, io)
            except BundleError as e:
                raise BundleError(f"bundle {self.path}: {e}") from None
            opset = _opset(model)
            if opset != m.opset:
                raise BundleError(f"bundle {self.path}: manifest says opset {m.opset}, {rel} imports "
                                  f"ai.onnx opset {opset}")
            if prec == m.precision and name == "prefill":
                table = _item_table(model, m.dims.d_model)
                rows = None if table is None else list(table.dims)
                if rows != [m.dims.num_items + 1, m.dims.d_model]:
                    raise BundleError(f"bundle {self.path}: manifest says num_items={m.dims.num_items} and "
                                      f"d={m.dims.d_model}, {rel} holds an item table of shape {rows} "
                                      f"(expected [{m.dims.num_items + 1}, {m.dims.d_model}])")
                tables[rel] = table
        return tables

    def verify_checkpoint(self, tables: dict[str, Any] | None = None) -> None:
        """arch, config, id map, cache shapes and item embeddings equal model.pt's."""
        m, where = self.manifest, f"bundle {self.path}"
        try:
            ckpt = self.checkpoint()
        except CheckpointError as e:
            raise BundleError(f"{where}: {m.source_checkpoint}: {e}") from None
        cfg = ckpt.config.to_dict()
        if ckpt.config.arch != m.arch:
            raise BundleError(f"{where}: manifest says arch={m.arch}, {m.source_checkpoint} is {ckpt.config.arch}")
        for key in sorted(set(cfg) | set(m.config)):
            if cfg.get(key, "(absent)") != m.config.get(key, "(absent)"):
                raise BundleError(f"{where}: manifest says config.{key}={m.config.get(key, '(absent)')!r}, "
                                  f"{m.source_checkpoint} has {cfg.get(key, '(absent)')!r}")
        raw = [int(i) for i in ckpt.id_map]
        if raw != list(m.id_map):
            at = next((i for i, (a, b) in enumerate(zip(raw, m.id_map)) if a != b), min(len(raw), len(m.id_map)))
            raise BundleError(f"{where}: manifest's id_map differs from {m.source_checkpoint}'s "
                              f"({len(m.id_map)} vs {len(raw)} ids; first difference at internal id {at + 1})")
        if m.dims.d_model != ckpt.config.d_model:
            raise BundleError(f"{where}: manifest says d={m.dims.d_model}, {m.source_checkpoint} has "
                              f"d_model {ckpt.config.d_model}")
        if m.dims.needs_timestamps != ckpt.model.needs_timestamps:
            raise BundleError(f"{where}: the graphs {'take' if m.dims.needs_timestamps else 'lack'} timestamps "
                              f"but {m.source_checkpoint} is {ckpt.config.arch}")
        try:
            shapes = ckpt.model.cache_shapes(m.dims.capacity)
        except ValueError as e:  # the model's position table cannot hold C slots
            raise BundleError(f"{where}: manifest says C={m.dims.capacity}, {m.source_checkpoint}: {e}") from None
        want = [TensorSpec(n, "float32" if dt.is_floating_point else "int32", tuple(s)) for n, s, dt in shapes]
        if list(m.cache) != want:
            raise BundleError(f"{where}: manifest says cache {[(c.name, list(c.shape)) for c in m.cache]}, "
                              f"{m.source_checkpoint} at C={m.dims.capacity} has "
                              f"{[(c.name, list(c.shape)) for c in want]}")
        for rel, table in (tables or {}).items():
            if not _same_table(self.path / rel, table, ckpt):
                raise BundleError(f"{where}: {m.source_checkpoint}'s item embeddings differ from {rel}'s: it is "
                                  "not the checkpoint these graphs were exported from; re-export the bundle")


def _same_table(graph_path: Path, table, ckpt: Checkpoint) -> bool:
    """Whether the graph's item table equals the checkpoint's embedding weights, bit for bit."""
    import numpy as np
    from onnx import numpy_helper
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    if uses_external_data(table):
        load_external_data_for_tensor(table, str(graph_path.parent))
    graph = numpy_helper.to_array(table)
    weight = ckpt.model.item_emb.weight.detach().cpu().numpy()
    return graph.shape == weight.shape and bool(np.array_equal(graph.astype(weight.dtype), weight))


def _read_manifest(bundle_dir: Path) -> Manifest:
    mpath = bundle_dir / MANIFEST_NAME
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle {bundle_dir}: not a directory")
    if mpath.is_symlink():
        raise BundleError(f"bundle {bundle_dir}: {MANIFEST_NAME} is a symbolic link; a bundle's manifest "
                          "must be a regular file inside it")
    if not mpath.is_file():
        raise BundleError(f"bundle {bundle_dir}: {MANIFEST_NAME} missing; not a genrec bundle (export one "
                          "with genrec-export)")
    try:
        with open(mpath, encoding="utf-8") as fh:
            d = json.load(fh)
    except json.JSONDecodeError as e:
        raise BundleError(f"bundle {bundle_dir}: {MANIFEST_NAME} is not valid JSON (line {e.lineno}, "
                          f"column {e.colno}: {e.msg})") from None
    except (OSError, UnicodeDecodeError, RecursionError, ValueError) as e:
        raise BundleError(f"bundle {bundle_dir}: cannot read {MANIFEST_NAME} ({type(e).__name__})") from None
    try:
        return Manifest.from_dict(d)
    except BundleError as e:
        raise BundleError(f"bundle {bundle_dir}: {MANIFEST_NAME}: {e}") from None


def validate_manifest(d: Any) -> Manifest:
    """Parse a manifest dict (``Manifest.from_dict``): BundleError naming the bad field."""
    return Manifest.from_dict(d)


def check_digest(digest: str | None) -> str | None:
    """Normalise an ``--expect-digest`` value: 64 hex digits (a ``sha256:`` prefix allowed)."""
    if digest is None:
        return None
    d = digest.strip().lower().removeprefix("sha256:")
    if not is_sha256(d):
        raise BundleError(f"--expect-digest {digest!r}: expected 64 hex digits (as `genrec inspect` prints)")
    return d


def load_bundle(path: str | os.PathLike[str], verify: bool = True, expect_digest: str | None = None) -> Bundle:
    """Read ``<path>/manifest.json`` and, with ``verify``, cross-check everything it describes.

    ``expect_digest`` refuses any bundle whose digest is not that one (checked first: cheap).
    ``verify=False`` only parses the manifest (for tools that just read it).
    """
    want = check_digest(expect_digest)
    bundle = Bundle(path=Path(path), manifest=_read_manifest(Path(path)))
    if want is not None and bundle.digest != want:
        raise BundleError(f"bundle {path}: digest {bundle.digest} is not the expected {want}: "
                          "a different or edited bundle")
    if verify:
        bundle.verify()
    return bundle


def write_manifest(bundle_dir: str | os.PathLike[str], manifest: dict[str, Any] | Manifest) -> Path:
    """Fill ``files`` from the directory, validate, cross-check the graphs, write atomically.

    ``schema``, ``schema_version``, ``created_at`` (now, UTC) and ``versions`` are filled in
    when absent. Returns the manifest path. (The checkpoint check runs when the bundle is
    next opened: the exporter opens it before it renames the bundle into place.)
    """
    bundle_dir = Path(bundle_dir)
    d = manifest.to_dict() if isinstance(manifest, Manifest) else dict(manifest)
    d.setdefault("schema", SCHEMA)
    d.setdefault("schema_version", SCHEMA_VERSION)
    d.setdefault("created_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    d.setdefault("versions", tool_versions())
    d.setdefault("checks", [])
    d.setdefault("parity", None)
    d["files"] = build_files_index(bundle_dir)
    m = Manifest.from_dict(d)
    bundle = Bundle(path=bundle_dir, manifest=m)
    for rel in m.referenced_files():
        if rel not in m.files:
            raise BundleError(f"bundle {bundle_dir}: {rel!r} is referenced but does not exist")
    bundle.verify_graphs()
    out = bundle_dir / MANIFEST_NAME
    with atomic_file(out, "w") as fh:
        json.dump(m.to_dict(), fh, sort_keys=True, indent=2)
        fh.write("\n")
    return out
