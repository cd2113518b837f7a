"""``acl.mdl``: load a double OM, describe it, build datasets, execute (ASCEND.md §2.1, §2.5, §7.2).

A double OM (written by ``tests/ascend_double/bin/atc``) is the magic line
``GENREC-ATC-DOUBLE-OM`` and a zip of ``meta.json`` (inputs with the extra
``ascend_mbatch_shape_data``, outputs named ``node:idx:name``, gears, precision mode) and the
ONNX graph ATC was given. ``execute`` runs that graph with onnxruntime on the first ``gear``
rows of every input buffer and writes the first ``gear`` rows of every output buffer, leaving
the rest untouched, as a gear model does. The gear is the one ``set_dynamic_batch_size`` put
in the dataset's ``ascend_mbatch_shape_data`` buffer, the largest when none was set.

Not emulated: fp16 numerics (an fp16 or mixed build runs the fp32 graph), engines, timing.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _core as _c

MAGIC = b"GENREC-ATC-DOUBLE-OM\n"
MBATCH = "ascend_mbatch_shape_data"
_ACL_TYPE = {"DT_FLOAT": 0, "DT_FLOAT16": 1, "DT_INT8": 2, "DT_INT32": 3, "DT_UINT8": 4, "DT_INT16": 6,
             "DT_INT64": 9, "DT_DOUBLE": 11, "DT_BOOL": 12, "DT_BF16": 27}
_NP = {"DT_FLOAT": np.float32, "DT_FLOAT16": np.float16, "DT_INT8": np.int8, "DT_INT32": np.int32,
       "DT_UINT8": np.uint8, "DT_INT16": np.int16, "DT_INT64": np.int64, "DT_DOUBLE": np.float64,
       "DT_BOOL": np.bool_}
_FORMAT = {"NCHW": 0, "NHWC": 1, "ND": 2, "NCDHW": 30}


@dataclass
class Model:
    mid: int
    ctx: int
    meta: dict
    session: Any
    tmpdir: str | None
    gears: list[int]
    cur_dims: dict[int, list[int]] = field(default_factory=dict)

    @property
    def inputs(self) -> list[dict]:
        return self.meta["inputs"]

    @property
    def outputs(self) -> list[dict]:
        return self.meta["outputs"]

    def dims(self, t: dict, gear: int | None = None) -> list[int]:
        g = gear or (max(self.gears) if self.gears else None)
        return [g if (d == -1 and i == 0 and g) else d for i, d in enumerate(t["dims"])]

    def size(self, t: dict, gear: int | None = None) -> int:
        dims = self.dims(t, gear)
        if any(d < 0 for d in dims):
            return 0  # a -1/range dynamic-shape input (no gears)
        return int(np.prod(dims, dtype=np.int64)) * np.dtype(_NP.get(t["dtype"], np.uint8)).itemsize


def _done(name: str, ret: int, value=None, tuple_=False):
    _c.record(name, ret)
    return (value, ret) if tuple_ else ret


def _load(data: bytes, name: str):
    ret = _c.need_ctx(name)
    if ret:
        return _done(name, ret, 0, True)
    if not data.startswith(MAGIC):
        return _done(name, _c.fail(_c.GE_LOAD_MODEL, "E19999: the file is not an offline model this runtime can "
                                   "load"), 0, True)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data[len(MAGIC):]))
        meta = json.loads(zf.read("meta.json"))
        members = {n: zf.read(n) for n in meta.get("files", ["model.onnx"])}
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        return _done(name, _c.fail(_c.GE_LOAD_MODEL, f"E19999: corrupt offline model ({e})"), 0, True)
    import onnxruntime as ort

    tmpdir = None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 1, 1, 3
    try:
        if len(members) > 1:  # external data resolves against the model's directory
            tmpdir = tempfile.mkdtemp(prefix="acl-double-")
            for n, b in members.items():
                with open(os.path.join(tmpdir, n), "wb") as fh:
                    fh.write(b)
            session = ort.InferenceSession(os.path.join(tmpdir, "model.onnx"), opts, providers=["CPUExecutionProvider"])
        else:
            session = ort.InferenceSession(members["model.onnx"], opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - whatever onnxruntime says about a graph it cannot load
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
        return _done(name, _c.fail(_c.GE_LOAD_MODEL, f"E19999: load model failed ({str(e)[:200]})"), 0, True)
    gears = [p[0] for p in meta.get("gears") or []] if meta.get("gear_flag") == "dynamic_batch_size" else []
    mid = len(_c.S.models) + 1
    while mid in _c.S.models:
        mid += 1
    _c.S.models[mid] = Model(mid, _c.current_ctx(), meta, session, tmpdir, gears)
    return _done(name, 0, mid, True)


def load_from_file(path: str):
    if not isinstance(path, str):
        raise TypeError("acl.mdl.load_from_file args parse failed")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        ret = _c.need_ctx("load_from_file") or _c.fail(_c.INVALID_FILE, f"EE9999: cannot read model file {path}")
        return _done("load_from_file", ret, 0, True)
    return _load(data, "load_from_file")


def load_from_mem(ptr: int, size: int):
    _c.ints("acl.mdl.load_from_mem", ptr, size)
    if not _c.valid(ptr, size, False):
        ret = _c.need_ctx("load_from_mem") or _c.fail(_c.INVALID_PARAM, "EH9999: load_from_mem: not host memory")
        return _done("load_from_mem", ret, 0, True)
    return _load(_c.read(ptr, size), "load_from_mem")


def _model(name: str, model_id: int, same_ctx: bool = True) -> tuple[Model | None, int]:
    ret = _c.need_ctx(name)
    if ret:
        return None, ret
    m = _c.S.models.get(model_id)
    if m is None:
        return None, _c.fail(_c.INVALID_MODEL_ID, f"EE9999: {name}: model id {model_id} is not loaded")
    if same_ctx and m.ctx != _c.current_ctx():
        return None, _c.fail(_c.RT_FAILURE, f"EE9999: {name}: model {model_id} was loaded in another context; "
                             "load, execute and unload must happen in the same context")
    return m, 0


def unload(model_id: int) -> int:
    _c.ints("acl.mdl.unload", model_id)
    m, ret = _model("unload", model_id)
    if m is not None:
        del _c.S.models[model_id]
        if m.tmpdir:
            shutil.rmtree(m.tmpdir, ignore_errors=True)
    return _done("unload", ret)


def create_desc() -> int:
    h = _c.handle()
    _c.S.descs[h] = None
    _c.record("create_desc", 0)
    return h


def get_desc(desc: int, model_id: int) -> int:
    _c.ints("acl.mdl.get_desc", desc, model_id)
    m, ret = _model("get_desc", model_id, same_ctx=False)
    if not ret and desc not in _c.S.descs:
        ret = _c.fail(_c.INVALID_PARAM, f"EH9999: get_desc: unknown desc {hex(desc)}")
    if not ret:
        _c.S.descs[desc] = model_id
    return _done("get_desc", ret)


def destroy_desc(desc: int) -> int:
    _c.ints("acl.mdl.destroy_desc", desc)
    ret = 0 if _c.S.descs.pop(desc, 0) != 0 else _c.fail(_c.INVALID_PARAM, "EH9999: destroy_desc: unknown desc")
    return _done("destroy_desc", ret)


def _desc_model(desc: int) -> Model | None:
    mid = _c.S.descs.get(desc)
    return _c.S.models.get(mid) if mid is not None else None


def get_num_inputs(desc: int) -> int:
    m = _desc_model(desc)
    return len(m.inputs) if m else 0


def get_num_outputs(desc: int) -> int:
    m = _desc_model(desc)
    return len(m.outputs) if m else 0


def _io(desc: int, i: int, out: bool) -> tuple[Model, dict] | None:
    m = _desc_model(desc)
    items = (m.outputs if out else m.inputs) if m else []
    return (m, items[i]) if m and 0 <= i < len(items) else None


def get_input_size_by_index(desc: int, i: int) -> int:
    _c.ints("acl.mdl.get_input_size_by_index", desc, i)
    r = _io(desc, i, False)
    return r[0].size(r[1]) if r else 0


def get_output_size_by_index(desc: int, i: int) -> int:
    _c.ints("acl.mdl.get_output_size_by_index", desc, i)
    r = _io(desc, i, True)
    return r[0].size(r[1]) if r else 0


def _dims(desc: int, i: int, out: bool, name: str):
    _c.ints(f"acl.mdl.{name}", desc, i)
    r = _io(desc, i, out)
    if r is None:
        return {}, _c.fail(_c.INVALID_PARAM, f"EH9999: {name}: index {i} out of range")
    t = r[1]
    return {"name": t["name"], "dimCount": len(t["dims"]), "dims": list(t["dims"])}, 0


def get_input_dims(desc: int, i: int):
    return _dims(desc, i, False, "get_input_dims")


get_input_dims_v2 = get_input_dims


def get_output_dims(desc: int, i: int):
    return _dims(desc, i, True, "get_output_dims")


def get_cur_output_dims(desc: int, i: int):
    _c.ints("acl.mdl.get_cur_output_dims", desc, i)
    r = _io(desc, i, True)
    if r is None:
        return {}, _c.fail(_c.INVALID_PARAM, f"EH9999: get_cur_output_dims: index {i} out of range")
    m, t = r
    dims = m.cur_dims.get(i, m.dims(t))
    return {"name": t["name"], "dimCount": len(dims), "dims": list(dims)}, 0


def get_input_data_type(desc: int, i: int) -> int:
    r = _io(desc, i, False)
    return _ACL_TYPE.get(r[1]["dtype"], -1) if r else -1


def get_output_data_type(desc: int, i: int) -> int:
    r = _io(desc, i, True)
    return _ACL_TYPE.get(r[1]["dtype"], -1) if r else -1


def get_input_format(desc: int, i: int) -> int:
    r = _io(desc, i, False)
    return _FORMAT.get(r[1].get("format", "ND"), 2) if r else -1


def get_output_format(desc: int, i: int) -> int:
    return 2 if _io(desc, i, True) else -1


def get_input_name_by_index(desc: int, i: int) -> str:
    r = _io(desc, i, False)
    return r[1]["name"] if r else ""


def get_output_name_by_index(desc: int, i: int) -> str:
    r = _io(desc, i, True)
    return r[1]["name"] if r else ""


def _index_by_name(desc: int, name: str, out: bool, fn: str):
    m = _desc_model(desc)
    items = (m.outputs if out else m.inputs) if m else []
    for i, t in enumerate(items):
        if t["name"] == name:
            return i, 0
    return -1, _c.fail(_c.INVALID_PARAM, f"EH9999: {fn}: no {'output' if out else 'input'} named {name!r}")


def get_input_index_by_name(desc: int, name: str):
    return _index_by_name(desc, name, False, "get_input_index_by_name")


def get_output_index_by_name(desc: int, name: str):
    return _index_by_name(desc, name, True, "get_output_index_by_name")


def get_dynamic_batch(desc: int):
    _c.ints("acl.mdl.get_dynamic_batch", desc)
    m = _desc_model(desc)
    if m is None:
        return {}, _c.fail(_c.INVALID_PARAM, "EH9999: get_dynamic_batch: desc holds no model")
    return {"batchCount": len(m.gears), "batch": list(m.gears)}, 0


# -- datasets ----------------------------------------------------------------------------------

def create_dataset() -> int:
    h = _c.handle()
    _c.S.datasets[h] = _c.Dataset(h)
    _c.record("create_dataset", 0)
    return h


def add_dataset_buffer(dataset: int, data_buffer: int):
    _c.ints("acl.mdl.add_dataset_buffer", dataset, data_buffer)
    ds = _c.S.datasets.get(dataset)
    if ds is None or data_buffer not in _c.S.data_buffers:
        return _done("add_dataset_buffer", _c.fail(_c.INVALID_PARAM, "EH9999: add_dataset_buffer: unknown handle"),
                     dataset, True)
    ds.buffers.append(data_buffer)
    return _done("add_dataset_buffer", 0, dataset, True)


def get_dataset_num_buffers(dataset: int) -> int:
    ds = _c.S.datasets.get(dataset)
    return len(ds.buffers) if ds else 0


def get_dataset_buffer(dataset: int, i: int) -> int:
    ds = _c.S.datasets.get(dataset)
    return ds.buffers[i] if ds and 0 <= i < len(ds.buffers) else 0


def destroy_dataset(dataset: int) -> int:
    _c.ints("acl.mdl.destroy_dataset", dataset)
    # allowed while buffers are still attached (real ACL does not free them either)
    ret = 0 if _c.S.datasets.pop(dataset, None) else _c.fail(_c.INVALID_PARAM, "EH9999: destroy_dataset: unknown")
    return _done("destroy_dataset", ret)


def set_dynamic_batch_size(model_id: int, dataset: int, index: int, batch: int) -> int:
    _c.ints("acl.mdl.set_dynamic_batch_size", model_id, dataset, index, batch)
    m, ret = _model("set_dynamic_batch_size", model_id)
    if ret:
        return _done("set_dynamic_batch_size", ret)
    ds = _c.S.datasets.get(dataset)
    if not m.gears:
        ret = _c.fail(_c.MODEL_NOT_DYNAMIC, f"EE9999: model {model_id} has no dynamic batch")
    elif ds is None or not 0 <= index < len(ds.buffers) or m.inputs[index]["name"] != MBATCH:
        ret = _c.fail(_c.INVALID_PARAM, f"EH9999: set_dynamic_batch_size: index {index} is not the "
                      f"{MBATCH} buffer of the dataset")
    elif batch not in m.gears:
        ret = _c.fail(_c.GE_DYNAMIC_BATCH_SIZE_INVALID, f"E10003: batch size {batch} is not one of the model's "
                      f"gears {m.gears}")
    else:
        db = _c.S.data_buffers.get(ds.buffers[index])
        if db is None or db.size < 8 or not _c.valid(db.addr, 8, True):
            ret = _c.fail(_c.INVALID_PARAM, f"EH9999: set_dynamic_batch_size: the {MBATCH} buffer is not "
                          "device memory of at least 8 bytes")
        else:
            _c.write(db.addr, struct.pack("<q", batch))  # the runtime writes the gear into the input
            ds.dynamic_batch = batch
    return _done("set_dynamic_batch_size", ret or _c.injected("set_dynamic_batch_size"))


def _execute(name: str, model_id: int, in_ds: int, out_ds: int) -> int:
    m, ret = _model(name, model_id)
    if ret:
        return ret
    ins, outs = _c.S.datasets.get(in_ds), _c.S.datasets.get(out_ds)
    if ins is None or len(ins.buffers) != len(m.inputs):
        return _c.fail(_c.MODEL_INPUT_NOT_MATCH, f"EE9999: {name}: the input dataset has "
                       f"{len(ins.buffers) if ins else 0} buffers, the model {len(m.inputs)} inputs")
    if outs is None or len(outs.buffers) != len(m.outputs):
        return _c.fail(_c.MODEL_OUTPUT_NOT_MATCH, f"EE9999: {name}: the output dataset has "
                       f"{len(outs.buffers) if outs else 0} buffers, the model {len(m.outputs)} outputs")
    gear = (ins.dynamic_batch or max(m.gears)) if m.gears else None
    feeds, spans = {}, []
    for i, t in enumerate(m.inputs):
        db = _c.S.data_buffers.get(ins.buffers[i])
        full, need = m.size(t), m.size(t, gear)
        if db is None or db.size > full or db.size < need or not _c.valid(db.addr, need, _c.is_device(db.addr)):
            return _c.fail(_c.MODEL_INPUT_NOT_MATCH, f"EE9999: {name}: input {i} ({t['name']}): buffer of "
                           f"{db.size if db else 0} bytes at {hex(db.addr) if db else 0}; the model needs "
                           f"{need}..{full} bytes of device memory")
        spans.append((db.addr, need))
        if t["name"] == MBATCH:
            continue
        arr = np.frombuffer(_c.read(db.addr, need), dtype=_NP[t["dtype"]]).reshape(m.dims(t, gear))
        feeds[t["name"]] = arr
    dbs = []
    for i, t in enumerate(m.outputs):
        db = _c.S.data_buffers.get(outs.buffers[i])
        need = m.size(t, gear)
        if db is None or db.size < need or not _c.valid(db.addr, need, _c.is_device(db.addr)):
            return _c.fail(_c.MODEL_OUTPUT_NOT_MATCH, f"EE9999: {name}: output {i} ({t['name']}): buffer of "
                           f"{db.size if db else 0} bytes; the model writes {need} bytes")
        if os.environ.get("ACL_DOUBLE_ALIAS", "allow") == "forbid" and any(
                a < db.addr + need and db.addr < a + n for a, n in spans):
            return _c.fail(_c.INVALID_PARAM, f"EE9999: {name}: output {t['name']} overlaps an input buffer")
        dbs.append(db)
    ret = _c.injected(name)
    if ret:
        return ret
    try:
        results = m.session.run([t["name"].rsplit(":", 1)[-1] for t in m.outputs], feeds)
    except Exception as e:  # noqa: BLE001
        return _c.fail(_c.GE_FAILURE, f"EE9999: {name}: execution failed ({str(e)[:300]})")
    for i, (t, db, arr) in enumerate(zip(m.outputs, dbs, results)):
        arr = np.ascontiguousarray(arr, dtype=_NP[t["dtype"]])
        _c.write(db.addr, arr.tobytes())
        m.cur_dims[i] = list(arr.shape)
    return 0


def execute(model_id: int, input_dataset: int, output_dataset: int) -> int:
    _c.ints("acl.mdl.execute", model_id, input_dataset, output_dataset)
    return _done("execute", _execute("execute", model_id, input_dataset, output_dataset))


def execute_async(model_id: int, input_dataset: int, output_dataset: int, stream: int) -> int:
    _c.ints("acl.mdl.execute_async", model_id, input_dataset, output_dataset, stream)
    ret = _c.fail(_c.INVALID_PARAM, "EE1001: execute_async: unknown stream") if stream not in _c.S.streams else 0
    return _done("execute_async", ret or _execute("execute_async", model_id, input_dataset, output_dataset))
