"""A hardware-free double of pyACL (``import acl``), for tests only (ASCEND.md §2, §7.2).

Importable as ``acl`` only when a test puts ``tests/ascend_double`` on ``sys.path`` (or on
``PYTHONPATH`` of a subprocess), as the real module is importable only after CANN's
``set_env.sh``. It copies the documented surface and failure modes, not the internals: the
return conventions, separate host and device address spaces, the init and context rules, the
dynamic-batch input ``ascend_mbatch_shape_data``, and it runs the ONNX graph the ATC double
embedded in its OM with onnxruntime on the first ``gear`` rows of each buffer. See
``_core`` for the rules and the test-only extras.
"""

from __future__ import annotations

import os

from . import _core as _c
from . import mdl, rt, util  # noqa: F401  (acl.rt, acl.mdl, acl.util as in pyACL)
from ._core import CALLS, LEAKS  # noqa: F401  (test-only)

__all__ = ["create_data_buffer", "destroy_data_buffer", "finalize", "get_data_buffer_addr", "get_data_buffer_size",
           "get_data_buffer_size_v2", "get_recent_err_msg", "get_soc_name", "init", "mdl", "rt",
           "update_data_buffer", "util"]


def init(config_path: str | None = None) -> int:
    if config_path is not None and not isinstance(config_path, str):
        raise TypeError("acl.init args parse failed")
    with _c.S.lock:
        if _c.S.initialized:
            ret = _c.fail(_c.REPEAT_INITIALIZE, "EH9999: acl.init: repeated initialization")
        else:
            ret = _c.injected("init")
            if not ret:
                _c.S.initialized = True
    _c.record("init", ret)
    return ret


def finalize() -> int:
    with _c.S.lock:
        ret = _c.need_init("finalize")
        if not ret:
            left = ([f"device memory {hex(a)} ({b.size} bytes)" for a, b in _c.S.blocks.items()]
                    + [f"host memory {hex(a)}" for a in _c.S.host_blocks]
                    + [f"model {m}" for m in _c.S.models] + [f"context {hex(c)}" for c in _c.S.contexts]
                    + [f"stream {hex(s)}" for s in _c.S.streams])
            _c.LEAKS[:] = left
            if left and os.environ.get("ACL_DOUBLE_TRACE"):
                with open(os.environ["ACL_DOUBLE_TRACE"], "a", encoding="utf-8") as fh:
                    fh.writelines(f"leak {x}\n" for x in left)
            _c.S.__init__()  # a fresh runtime, as after a real aclFinalize
    _c.record("finalize", ret)
    return ret


def get_recent_err_msg() -> str:
    return _c.recent_error()


def get_soc_name() -> str:
    return os.environ.get("ACL_DOUBLE_SOC", "Ascend310P3")


def create_data_buffer(ptr: int, size: int) -> int:
    _c.ints("acl.create_data_buffer", ptr, size)
    h = _c.handle()
    _c.S.data_buffers[h] = _c.DataBuffer(h, ptr, size)
    _c.record("create_data_buffer", 0)
    return h


def update_data_buffer(buf: int, ptr: int, size: int) -> int:
    _c.ints("acl.update_data_buffer", buf, ptr, size)
    db = _c.S.data_buffers.get(buf)
    ret = _c.fail(_c.INVALID_PARAM, f"EH9999: acl.update_data_buffer: unknown data buffer {hex(buf)}") \
        if db is None else _c.injected("update_data_buffer")
    if not ret:
        db.addr, db.size = ptr, size
    _c.record("update_data_buffer", ret)
    return ret


def destroy_data_buffer(buf: int) -> int:
    _c.ints("acl.destroy_data_buffer", buf)
    ret = SUCCESS_IF(_c.S.data_buffers.pop(buf, None) is not None, "destroy_data_buffer", buf)
    _c.record("destroy_data_buffer", ret)
    return ret


def get_data_buffer_addr(buf: int) -> int:
    _c.ints("acl.get_data_buffer_addr", buf)
    db = _c.S.data_buffers.get(buf)
    return 0 if db is None else db.addr


def get_data_buffer_size(buf: int) -> int:
    _c.ints("acl.get_data_buffer_size", buf)
    db = _c.S.data_buffers.get(buf)
    return 0 if db is None else db.size


get_data_buffer_size_v2 = get_data_buffer_size


def SUCCESS_IF(ok: bool, name: str, h: int) -> int:  # noqa: N802
    return _c.SUCCESS if ok else _c.fail(_c.INVALID_PARAM, f"EH9999: acl.{name}: unknown handle {hex(h)}")
