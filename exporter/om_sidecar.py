"""What an OM's ``atc --mode=1`` JSON sidecar says, checked against the bundle's manifest.

An OM is opaque without CANN, so genrec never parses one. ``atc --mode=1 --om=X.om
--json=X.json`` dumps the model as GE's ModelDef JSON (ASCEND.md §1.4, §1.5): ``graph[0].op``
lists every op with ``name``, ``type`` and ``attr`` (``[{"key": ..., "value": {"s"|"i": ...}}]``),
the inputs are its ``Data`` ops (``output_desc[0]``: dtype and dims, -1 on a gear axis), the
outputs feed its ``NetOutput`` op, whose ``all_gears_info`` attr lists the gears (GE's
``ATTR_ALL_GEARS_INFO``), and each op's ``_ge_attr_op_kernel_lib_name`` names its engine.

That layout is read off GE's source and msit's OM parser (which reads ``graph[0].op`` and
``_ge_attr_op_kernel_lib_name``); it has not been checked against a real dump (ASCEND.md §9),
so every field is read defensively and what is absent is not checked rather than guessed.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from genrec.errors import BundleError
from genrec.manifest import GraphSpec

__all__ = ["MBATCH_INPUT", "check_sidecar", "engine_counts", "read_sidecar"]

MBATCH_INPUT = "ascend_mbatch_shape_data"
_DTYPES = {"DT_FLOAT": "float32", "DT_FLOAT16": "float16", "DT_INT32": "int32", "DT_INT64": "int64",
           "DT_BOOL": "bool", "DT_INT8": "int8", "DT_UINT8": "uint8", "DT_DOUBLE": "float64", "DT_BF16": "bfloat16"}


def read_sidecar(path: Path) -> dict[str, Any]:
    """The first graph of a mode-1 JSON; BundleError naming the file when it is not one."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        graph = doc["graph"][0]
        if not isinstance(graph.get("op"), list):
            raise TypeError("graph[0].op is not a list")
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise BundleError(f"{path}: not an `atc --mode=1` JSON ({type(e).__name__}: {e})") from None
    return doc


def _attrs(obj: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for a in obj.get("attr") or []:
        if isinstance(a, dict) and isinstance(a.get("key"), str):
            v = a.get("value") or {}
            out[a["key"]] = v.get("s", v.get("i", v))
    return out


def _dims(desc: dict[str, Any]) -> list[int] | None:
    shape = desc.get("shape") or {}
    dims = shape.get("dim") if isinstance(shape, dict) else None
    return [int(d) for d in dims] if isinstance(dims, list) else None


def check_sidecar(doc: dict[str, Any], spec: GraphSpec, gears: tuple[int, ...], soc: str, where: str) -> None:
    """The sidecar's inputs, outputs, gears and soc against the manifest; BundleError on a difference."""
    graph = doc["graph"][0]
    ops = graph["op"]
    model_attrs = _attrs(doc)
    if isinstance(model_attrs.get("soc_version"), str) and model_attrs["soc_version"] != soc:
        raise BundleError(f"{where}: built for {model_attrs['soc_version']}, not {soc}")
    data = [op for op in ops if op.get("type") == "Data" and op.get("name") != MBATCH_INPUT]
    names = [op.get("name") for op in data]
    want = [s.name for s in spec.inputs]
    if sorted(names) != sorted(want):
        raise BundleError(f"{where}: OM inputs {sorted(names)} differ from the manifest's {sorted(want)}")
    dynamic = len(gears) > 1
    for op in data:
        s = spec.input(op["name"])
        desc = (op.get("output_desc") or [{}])[0]
        dims = _dims(desc)
        batch = -1 if dynamic else gears[0]
        expect = [batch, *s.shape[1:]]
        if dims is not None and dims != expect:
            raise BundleError(f"{where}: OM input {s.name} has dims {dims}, the manifest's gives {expect}")
        dtype = _DTYPES.get(desc.get("dtype"))
        if dtype is not None and dtype != s.dtype:
            raise BundleError(f"{where}: OM input {s.name} is {dtype}, the manifest says {s.dtype}")
    if dynamic and not any(op.get("name") == MBATCH_INPUT for op in ops if op.get("type") == "Data"):
        raise BundleError(f"{where}: OM has no {MBATCH_INPUT} input, so it was not built with batch gears")
    net = next((op for op in ops if op.get("type") == "NetOutput"), None)
    if net is not None:
        descs = net.get("input_desc") or []
        if descs and len(descs) != len(spec.outputs):
            raise BundleError(f"{where}: OM has {len(descs)} outputs, the manifest {len(spec.outputs)}")
        out_names = [str(_attrs(d).get("name", "")).rsplit(":", 1)[-1] for d in descs]
        if all(out_names) and descs and sorted(out_names) != sorted(s.name for s in spec.outputs):
            raise BundleError(f"{where}: OM outputs {sorted(out_names)} differ from the manifest's "
                              f"{sorted(s.name for s in spec.outputs)}")
        info = _attrs(net).get("all_gears_info")
        if isinstance(info, str) and info.strip(";"):
            got = sorted({int(x) for part in info.split(";") for x in part.split(",") if x.strip()})
            if got != sorted(gears):
                raise BundleError(f"{where}: OM gears {got} differ from the manifest's {list(gears)}")
        elif dynamic and isinstance(info, str):
            raise BundleError(f"{where}: OM has no gears, the manifest has {list(gears)}")


def engine_counts(doc: dict[str, Any]) -> dict[str, Counter]:
    """Op types per engine (``_ge_attr_op_kernel_lib_name``: AIcoreEngine, aicpu_*...), Data and
    NetOutput left out: what a real build put where, as opposed to ASCEND.md's table."""
    out: dict[str, Counter] = {}
    for op in doc["graph"][0]["op"]:
        if op.get("type") in ("Data", "NetOutput"):
            continue
        engine = _attrs(op).get("_ge_attr_op_kernel_lib_name")
        if isinstance(engine, str):
            out.setdefault(engine, Counter())[op.get("type", "?")] += 1
    return out
