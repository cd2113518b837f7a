"""The typed bundle manifest: one frozen dataclass, written by the exporter, read by every runtime.

``manifest.json`` is the one file that tells a runtime what the graphs next to it expect, so
every size lives here once (``Dims``: T, C, K', step K, X, M, d, N, gears) instead of being
spelt again by the exporter, each backend and each tool. ``Manifest.from_dict`` validates as it
parses and names the bad field; ``to_dict`` writes it back, so ``from_dict(to_dict(m)) == m``
and unknown keys written by a newer genrec survive in ``extra``.

The manifest's integrity is its *digest*: the sha256 of its canonical JSON (sorted keys, no
whitespace), which covers every file's sha256 through ``files``. It is computed whenever a
manifest is read and never stored, so an edited manifest simply has another digest; pin the
one you tested with ``--expect-digest``.

Per-target artifacts (``targets``) leave room for builds of the same graphs for other
runtimes, Ascend OM files first: each ``TargetBuild`` names its files (hashed like any other
file), the exact tool command lines and the tool's version.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from genrec.errors import BundleError

__all__ = ["Dims", "GraphSpec", "Manifest", "SCHEMA", "SCHEMA_VERSION", "TargetBuild", "TensorSpec",
           "Variant", "DEFAULT_STEP_TOPK", "GRAPH_NAMES", "canonical_json"]

SCHEMA = "genrec.bundle"
SCHEMA_VERSION = 2
GRAPH_NAMES = ("prefill", "step", "rank")
# default top-K of the step graph: generation needs a few candidates per row (beams, a greedy
# pick, a sampling top-k), not a retrieval list, and TopK over the catalogue was a third of a
# batch-64 HSTU step at K'=100
DEFAULT_STEP_TOPK = 32
EXPORTERS = ("dynamo", "torchscript")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _bad(where: str, msg: str) -> BundleError:
    return BundleError(f"manifest field {where}: {msg}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _int(d: Mapping[str, Any], key: str, low: int = 1, where: str = "") -> int:
    f = f"{where}{key}"
    if key not in d:
        raise BundleError(f"manifest: missing required field {f!r}")
    v = d[key]
    if not _is_int(v):
        raise _bad(f, f"expected int, got {type(v).__name__}")
    if v < low:
        raise _bad(f, f"must be >= {low}, got {v}")
    return v


def _typed(d: Mapping[str, Any], key: str, want: type, where: str = "") -> Any:
    f = f"{where}{key}"
    if key not in d:
        raise BundleError(f"manifest: missing required field {f!r}")
    if not isinstance(d[key], want):
        raise _bad(f, f"expected {want.__name__}, got {type(d[key]).__name__}")
    return d[key]


def _object(d: Any, where: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """``d`` as a JSON object holding every one of ``keys``; BundleError naming ``where`` otherwise."""
    if not isinstance(d, dict):
        raise _bad(where, "expected an object")
    for k in keys:
        if k not in d:
            raise _bad(where, f"missing {k!r}")
    return d


def is_sha256(text: Any) -> bool:
    """Whether ``text`` is a lowercase hex sha256 digest (as ``files`` lists and digests are)."""
    return isinstance(text, str) and bool(_HEX64.match(text))


def relpath(rel: Any, where: str) -> str:
    """A path inside the bundle: relative, POSIX, no ``..``; BundleError naming ``where``."""
    if not isinstance(rel, str) or not rel:
        raise _bad(where, f"expected a relative path, got {rel!r}")
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or "\\" in rel or "\x00" in rel:
        raise _bad(where, f"{rel!r} must stay inside the bundle")
    return rel


def canonical_json(d: Any) -> str:
    """The one serialisation the digest is taken of: sorted keys, no whitespace, UTF-8 text."""
    return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# --------------------------------------------------------------------------------------------
# graphs and their IO


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, numpy dtype name, shape (ints and symbolic names)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @classmethod
    def from_dict(cls, d: Any, where: str) -> TensorSpec:
        _object(d, where, ("name", "dtype", "shape"))
        if not isinstance(d["name"], str) or not d["name"]:
            raise _bad(f"{where}.name", "expected a non-empty string")
        if not isinstance(d["dtype"], str) or not d["dtype"]:
            raise _bad(f"{where}.dtype", "expected a dtype name like 'int32'")
        shape = d["shape"]
        if not isinstance(shape, list) or not all(
                (_is_int(s) and s >= 0) or (isinstance(s, str) and s) for s in shape):
            raise _bad(f"{where}.shape", f"expected a list of ints and symbolic names, got {shape!r}")
        return cls(d["name"], d["dtype"], tuple(shape))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def _specs(items: Any, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(items, list):
        raise _bad(where, f"expected a list, got {type(items).__name__}")
    out = tuple(TensorSpec.from_dict(e, f"{where}[{i}]") for i, e in enumerate(items))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise _bad(where, "names must be unique")
    return out


@dataclass(frozen=True)
class GraphSpec:
    """One graph file and its IO contract (what ``io_spec_from_onnx`` reads off the file)."""

    file: str
    exporter: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    note: str | None = None

    @classmethod
    def from_dict(cls, d: Any, where: str) -> GraphSpec:
        _object(d, where, ("file", "exporter", "inputs", "outputs"))
        if d["exporter"] not in EXPORTERS:
            raise _bad(f"{where}.exporter", f"{d['exporter']!r} is not one of {EXPORTERS}")
        note = d.get("note")
        if note is not None and not isinstance(note, str):
            raise _bad(f"{where}.note", "expected a string")
        return cls(relpath(d["file"], f"{where}.file"), d["exporter"], _specs(d["inputs"], f"{where}.inputs"),
                   _specs(d["outputs"], f"{where}.outputs"), note)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"file": self.file, "exporter": self.exporter,
                             "inputs": [s.to_dict() for s in self.inputs],
                             "outputs": [s.to_dict() for s in self.outputs]}
        if self.note is not None:
            d["note"] = self.note
        return d

    def io(self) -> dict[str, list[dict[str, Any]]]:
        """``{"inputs": [...], "outputs": [...]}`` as plain dicts (``io_spec_from_onnx``'s form)."""
        return {"inputs": [s.to_dict() for s in self.inputs], "outputs": [s.to_dict() for s in self.outputs]}

    def input(self, name: str) -> TensorSpec | None:
        return next((s for s in self.inputs if s.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((s for s in self.outputs if s.name == name), None)


def _graphs(d: Any, where: str) -> dict[str, GraphSpec]:
    if not isinstance(d, dict) or not d:
        raise _bad(where, "expected a non-empty object of graphs")
    out = {}
    for name, spec in d.items():
        if name not in GRAPH_NAMES:
            raise _bad(f"{where}.{name}", f"unknown graph (expected one of {GRAPH_NAMES})")
        out[name] = GraphSpec.from_dict(spec, f"{where}.{name}")
    return out


@dataclass(frozen=True)
class Variant:
    """A quantised or converted copy of the graphs (same IO contract), under ``dir``.

    ``info`` keeps the variant's recipe, calibration digest and measured deltas verbatim."""

    dir: str
    graphs: dict[str, GraphSpec]
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Variant:
        _object(d, where, ("dir", "graphs"))
        return cls(relpath(d["dir"], f"{where}.dir"), _graphs(d["graphs"], f"{where}.graphs"),
                   {k: v for k, v in d.items() if k not in ("dir", "graphs")})

    def to_dict(self) -> dict[str, Any]:
        return {**self.info, "dir": self.dir, "graphs": {n: g.to_dict() for n, g in self.graphs.items()}}

    def file(self, graph: str) -> str:
        """Bundle-relative path of one graph (``file`` is relative to ``dir``)."""
        d, f = self.dir.rstrip("/"), self.graphs[graph].file
        return f if f.startswith(d + "/") else f"{d}/{f}"


@dataclass(frozen=True)
class TargetBuild:
    """Graphs built for one target runtime (e.g. Ascend OM for one SoC and precision mode).

    ``graphs`` maps each graph name to its file in the bundle (hashed in ``files`` like any
    other), ``commands`` to the exact command line that produced it, ``tool_version`` is the
    converter's (ATC/CANN) version; anything else a target needs rides in ``info``."""

    soc: str
    precision: str
    gears: tuple[int, ...]
    graphs: dict[str, str]
    commands: dict[str, str] = field(default_factory=dict)
    tool_version: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> TargetBuild:
        _object(d, where, ("soc", "precision", "gears", "graphs"))
        gears = d["gears"]
        if not isinstance(gears, list) or not gears or not all(_is_int(g) and g >= 1 for g in gears):
            raise _bad(f"{where}.gears", f"expected positive ints, got {gears!r}")
        graphs = d["graphs"]
        if not isinstance(graphs, dict) or not graphs:
            raise _bad(f"{where}.graphs", "expected an object of graph -> file")
        files = {name: relpath(f, f"{where}.graphs.{name}") for name, f in graphs.items()}
        commands = d.get("commands", {})
        if not isinstance(commands, dict) or not all(isinstance(c, str) for c in commands.values()):
            raise _bad(f"{where}.commands", "expected an object of graph -> command line")
        tv = d.get("tool_version")
        if tv is not None and not isinstance(tv, str):
            raise _bad(f"{where}.tool_version", "expected a string")
        for k in ("soc", "precision"):
            if not isinstance(d[k], str) or not d[k]:
                raise _bad(f"{where}.{k}", "expected a non-empty string")
        rest = {k: v for k, v in d.items()
                if k not in ("soc", "precision", "gears", "graphs", "commands", "tool_version")}
        return cls(d["soc"], d["precision"], tuple(gears), files, dict(commands), tv, rest)

    def to_dict(self) -> dict[str, Any]:
        return {**self.info, "soc": self.soc, "precision": self.precision, "gears": list(self.gears),
                "graphs": dict(self.graphs), "commands": dict(self.commands), "tool_version": self.tool_version}


# --------------------------------------------------------------------------------------------
# the sizes


@dataclass(frozen=True)
class Dims:
    """The static sizes every part of a bundle shares, defined once.

    ``step_topk`` is always the step graph's own K (resolved at export, never 0); ``topk`` is
    the prefill graph's K'. ``needs_timestamps`` and ``temperature`` ride along because the
    decoding loop needs them with the sizes (HSTU's time inputs; log p = score / T − log_z)."""

    arch: str
    num_items: int  # N: internal ids are 1..N, 0 is padding
    max_history: int  # T: history slots of the prefill graph
    capacity: int  # C: cache slots; T + generated items must fit
    topk: int  # K': candidates returned per prefill
    step_topk: int  # step K: candidates returned per step (<= K')
    max_exclude: int  # X: width of the exclude_ids input
    rank_candidates: int  # M: candidates the rank graph scores at once
    batch_gears: tuple[int, ...]  # batch sizes a backend accepts, ascending
    needs_timestamps: bool  # HSTU: timestamps, request_time and per-step timestamps
    temperature: float  # head temperature: log p = topk_score / temperature - log_z
    d_model: int = 0  # d: width of user_emb and of the item vectors (0: not known)

    def check(self) -> Dims:
        """Refuse sizes no graph can have; returns self."""
        for name in ("num_items", "max_history", "capacity", "topk", "step_topk", "max_exclude",
                     "rank_candidates"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise _bad(name, f"must be an int >= 1, got {v!r}")
        if self.step_topk > self.topk:
            raise _bad("step_topk", f"expected an int in 1..topk ({self.topk}), got {self.step_topk}")
        if self.topk > self.num_items:
            raise _bad("topk", f"{self.topk} exceeds num_items {self.num_items}")
        if self.capacity <= self.max_history:
            raise _bad("capacity", f"{self.capacity} must exceed max_history {self.max_history}")
        gears = self.batch_gears
        if not gears or not all(_is_int(g) and g >= 1 for g in gears) or len(set(gears)) != len(gears):
            raise _bad("batch_gears", f"expected distinct positive ints, got {list(gears)!r}")
        return self

    def __str__(self) -> str:
        return (f"T={self.max_history}, C={self.capacity}, K'={self.topk} (step {self.step_topk}), "
                f"X={self.max_exclude}, M={self.rank_candidates}, d={self.d_model}, N={self.num_items}, "
                f"gears {','.join(map(str, self.batch_gears))}")


_DIM_KEYS = ("num_items", "d_model", "max_history", "capacity", "topk", "step_topk", "max_exclude",
             "rank_candidates")


# --------------------------------------------------------------------------------------------
# the manifest


@dataclass(frozen=True)
class Manifest:
    """Everything ``manifest.json`` says, typed. Build with ``from_dict``; write with ``to_dict``."""

    arch: str
    config: dict[str, Any]
    dims: Dims
    opset: int
    precision: str
    id_map: tuple[int, ...]
    graphs: dict[str, GraphSpec]
    cache: tuple[TensorSpec, ...]  # cache tensors without the batch axis, in graph order
    source_checkpoint: str
    files: dict[str, str]
    created_at: str
    target: str = "onnxruntime"
    variants: dict[str, Variant] = field(default_factory=dict)
    targets: dict[str, tuple[TargetBuild, ...]] = field(default_factory=dict)
    checks: tuple[dict[str, Any], ...] = ()
    parity: dict[str, Any] | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # keys this genrec does not know, kept

    # -- parsing -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Any) -> Manifest:
        """Validate and parse; BundleError naming the first bad field."""
        if not isinstance(d, dict):
            raise BundleError(f"manifest: expected a JSON object, got {type(d).__name__}")
        if d.get("schema") != SCHEMA:
            raise _bad("schema", f"expected {SCHEMA!r}, got {d.get('schema')!r}")
        if d.get("schema_version") != SCHEMA_VERSION or not _is_int(d.get("schema_version")):
            raise _bad("schema_version", f"this genrec reads version {SCHEMA_VERSION}, got "
                       f"{d.get('schema_version')!r}; re-export the bundle with this genrec version")
        arch = _typed(d, "arch", str)
        config = _typed(d, "config", dict)
        if config.get("arch", arch) != arch:
            raise _bad("config.arch", f"{config.get('arch')!r} disagrees with arch {arch!r}")
        temperature = config.get("temperature")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise _bad("config.temperature", f"expected a positive number, got {temperature!r}")
        sizes = {k: _int(d, k) for k in _DIM_KEYS}
        gears = tuple(_typed(d, "batch_gears", list))
        graphs = _graphs(_typed(d, "graphs", dict), "graphs")
        prefill = graphs.get("prefill")
        dims = Dims(arch=arch, batch_gears=tuple(sorted(gears)) if all(map(_is_int, gears)) else gears,
                    needs_timestamps=prefill is not None and prefill.input("timestamps") is not None,
                    temperature=float(temperature), **sizes).check()
        opset = _int(d, "opset")
        precision = _typed(d, "precision", str)
        target = d.get("target", "onnxruntime")
        if not isinstance(target, str):
            raise _bad("target", "expected a string")
        id_map = _typed(d, "id_map", list)
        if not all(_is_int(x) for x in id_map):
            raise _bad("id_map", "expected a list of ints")
        if len(id_map) != dims.num_items:
            raise _bad("id_map", f"has {len(id_map)} entries but num_items is {dims.num_items}")
        if len(set(id_map)) != len(id_map):
            raise _bad("id_map", "raw ids must be unique")
        cache = _specs(_typed(d, "cache", list), "cache")
        for c in cache:  # static KV buffers: every cache tensor has a slot axis of C
            if dims.capacity not in c.shape:
                raise BundleError(f"manifest says C={dims.capacity}, its cache {c.name} has shape {list(c.shape)}")
        files = _typed(d, "files", dict)
        for rel, digest in files.items():
            relpath(rel, "files")
            if not is_sha256(digest):
                raise _bad(f"files[{rel!r}]", "expected a sha256 hex digest")
        raw_variants = d.get("variants") or {}
        if not isinstance(raw_variants, dict):
            raise _bad("variants", "expected an object or null")
        variants = {}
        for name, v in raw_variants.items():
            if name == precision:
                raise _bad(f"variants.{name}", "duplicates the base precision")
            variants[name] = Variant.from_dict(v, f"variants.{name}")
        raw_targets = d.get("targets") or {}
        if not isinstance(raw_targets, dict):
            raise _bad("targets", "expected an object of target -> list of builds")
        targets = {}
        for tname, builds in raw_targets.items():
            if not isinstance(builds, list):
                raise _bad(f"targets.{tname}", "expected a list of builds")
            targets[tname] = tuple(TargetBuild.from_dict(b, f"targets.{tname}[{i}]") for i, b in enumerate(builds))
        checks = _typed(d, "checks", list)
        if not all(isinstance(c, dict) for c in checks):
            raise _bad("checks", "expected a list of objects")
        if "parity" not in d:
            raise BundleError("manifest: missing required field 'parity' (null when not run)")
        if d["parity"] is not None and not isinstance(d["parity"], dict):
            raise _bad("parity", "expected an object or null")
        created = _typed(d, "created_at", str)
        try:
            datetime.fromisoformat(created)
        except ValueError:
            raise _bad("created_at", f"{created!r} is not an ISO 8601 timestamp") from None
        known = {f.name for f in fields(cls)} | set(_DIM_KEYS) | {"batch_gears", "schema", "schema_version"}
        return cls(arch=arch, config=dict(config), dims=dims, opset=opset, precision=precision,
                   id_map=tuple(id_map), graphs=graphs, cache=cache,
                   source_checkpoint=relpath(_typed(d, "source_checkpoint", str), "source_checkpoint"),
                   files=dict(files), created_at=created, target=target, variants=variants,
                   targets=targets, checks=tuple(checks), parity=d["parity"],
                   versions=dict(_typed(d, "versions", dict)),
                   extra={k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``from_dict``'s input); the digest is taken of exactly this."""
        d = dict(self.extra)
        d.update({
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "arch": self.arch, "config": dict(self.config),
            **{k: getattr(self.dims, k) for k in _DIM_KEYS}, "batch_gears": list(self.dims.batch_gears),
            "opset": self.opset, "precision": self.precision, "target": self.target,
            "id_map": list(self.id_map), "graphs": {n: g.to_dict() for n, g in self.graphs.items()},
            "cache": [c.to_dict() for c in self.cache], "source_checkpoint": self.source_checkpoint,
            "files": dict(self.files), "created_at": self.created_at, "checks": list(self.checks),
            "parity": self.parity, "versions": dict(self.versions),
        })
        if self.variants:
            d["variants"] = {n: v.to_dict() for n, v in self.variants.items()}
        if self.targets:
            d["targets"] = {n: [b.to_dict() for b in builds] for n, builds in self.targets.items()}
        return d

    def replace(self, **changes: Any) -> Manifest:
        return replace(self, **changes)

    # -- derived -------------------------------------------------------------------------
    @property
    def digest(self) -> str:
        """sha256 of the canonical JSON: the bundle's identity (covers every file's sha256)."""
        return hashlib.sha256(canonical_json(self.to_dict()).encode("utf-8")).hexdigest()

    @property
    def precisions(self) -> list[str]:
        """Base precision first, then the variants' (sorted)."""
        return [self.precision, *sorted(self.variants)]

    def graph_entry(self, name: str, precision: str | None = None) -> tuple[str, GraphSpec]:
        """(bundle-relative file, spec) of graph ``name`` at ``precision`` (default: the base)."""
        precision = precision or self.precision
        if precision == self.precision:
            graphs, spec = self.graphs, self.graphs.get(name)
            rel = spec.file if spec is not None else ""
        else:
            if precision not in self.variants:
                raise BundleError(f"no {precision!r} variant (available: {', '.join(self.precisions)})")
            variant = self.variants[precision]
            graphs, spec = variant.graphs, variant.graphs.get(name)
            rel = variant.file(name) if spec is not None else ""
        if spec is None:
            raise BundleError(f"no {name!r} graph at {precision} (available: {', '.join(sorted(graphs))})")
        return rel, spec

    def graph_files(self) -> list[tuple[str, str, str]]:
        """Every ONNX graph as (precision, name, bundle-relative file)."""
        out = [(self.precision, n, g.file) for n, g in self.graphs.items()]
        for prec in sorted(self.variants):
            out.extend((prec, n, self.variants[prec].file(n)) for n in self.variants[prec].graphs)
        return out

    def referenced_files(self) -> list[str]:
        """Every file the manifest points at: checkpoint, graphs, target builds."""
        refs = [self.source_checkpoint] + [f for _, _, f in self.graph_files()]
        for builds in self.targets.values():
            for b in builds:
                refs.extend(b.graphs.values())
        return refs
