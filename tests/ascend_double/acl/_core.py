"""State of the pyACL double: init flag, devices, contexts, streams, memory, models, datasets.

Everything the three submodules (``acl.rt``, ``acl.mdl``, ``acl.util``) and the main module
share lives here. The rules copied from ASCEND.md §2 and §7.2:

- returns: plain ``ret`` ints, ``(value, ret)`` tuples for getters that can fail, bare values
  for ``create_desc``/``create_dataset``/``create_data_buffer``/``get_num_*``/sizes/names;
  handles and pointers are Python ints; a non-int where the C extension parses ``k``/``i``
  raises ``TypeError: acl.<mod>.<fn> args parse failed``;
- calls before ``acl.init`` -> 100001; a second ``init`` -> 100002;
- memory: device addresses come from a range above the 47-bit user space of x86_64/aarch64,
  so that no host pointer can ever be one; host pointers are real process addresses (from
  ``malloc_host`` or ``bytes_to_ptr``); ``memcpy`` checks the kind against both ranges and
  ``count <= dst_max`` (100000 otherwise); a freed pointer is unknown (100000);
- contexts are per thread: ``set_device`` and ``create_context`` make one current on the
  calling thread only, ``set_context`` binds one in another thread; device and model calls
  without a current context fail with ACL_ERROR_RT_CONTEXT_NULL (107002, acl_base_rt.h), and
  a model runs only in the context that loaded it.

Test-only extras, never part of the surface a backend may use: ``CALLS`` (every call's name
and ret), ``ACL_DOUBLE_TRACE=<file>`` (the same, one line per call, for subprocesses),
``ACL_DOUBLE_FAIL=<call>:<code>[:<nth>]`` (fault injection), ``ACL_DOUBLE_SOC``,
``ACL_DOUBLE_DEVICES``, ``ACL_DOUBLE_ALIAS=allow|forbid`` (an output buffer that overlaps an
input buffer in one execute), ``LEAKS`` (what ``finalize`` found still allocated).
"""

from __future__ import annotations

import bisect
import ctypes
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

SUCCESS = 0
INVALID_PARAM = 100000
UNINITIALIZE = 100001
REPEAT_INITIALIZE = 100002
INVALID_FILE = 100003
INVALID_MODEL_ID = 100011
MODEL_INPUT_NOT_MATCH = 100017
MODEL_OUTPUT_NOT_MATCH = 100018
MODEL_NOT_DYNAMIC = 100019
BAD_ALLOC = 200000
INVALID_DEVICE = 200002
GE_FAILURE = 500002
RT_FAILURE = 500003
GE_DYNAMIC_BATCH_SIZE_INVALID = 145013
GE_LOAD_MODEL = 545001
RT_CONTEXT_NULL = 107002

DEVICE_BASE = 0x1_2C00_0000_0000  # above any x86_64/aarch64 user-space (host) address
ALIGN = 32


@dataclass
class Block:
    addr: int
    size: int
    data: bytearray
    ctx: int


@dataclass
class Context:
    handle: int
    device: int
    default: bool = False


@dataclass
class Dataset:
    handle: int
    buffers: list[int] = field(default_factory=list)
    dynamic_batch: int | None = None  # set by set_dynamic_batch_size (the gear that runs)


@dataclass
class DataBuffer:
    handle: int
    addr: int
    size: int


class State:
    def __init__(self) -> None:
        self.initialized = False
        self.lock = threading.RLock()
        self.local = threading.local()
        self.next_handle = 0x5A00_0000
        self.device_refs: dict[int, int] = {}
        self.default_ctx: dict[int, int] = {}
        self.contexts: dict[int, Context] = {}
        self.streams: dict[int, int] = {}  # stream -> context
        self.blocks: dict[int, Block] = {}
        self.bases: list[int] = []
        self.next_dev = DEVICE_BASE
        self.host_blocks: dict[int, Any] = {}  # malloc_host: addr -> ctypes buffer
        self.host_bases: list[int] = []
        self.borrowed: OrderedDict[int, tuple[int, Any]] = OrderedDict()  # bytes_to_ptr: addr -> (size, obj)
        self.models: dict[int, Any] = {}
        self.descs: dict[int, int | None] = {}
        self.datasets: dict[int, Dataset] = {}
        self.data_buffers: dict[int, DataBuffer] = {}
        self.fail_counts: dict[str, int] = {}


S = State()
CALLS: list[tuple[str, int]] = []
LEAKS: list[str] = []


def handle() -> int:
    with S.lock:
        S.next_handle += 0x40
        return S.next_handle


def set_error(msg: str) -> None:
    S.local.err = msg


def recent_error() -> str:
    return getattr(S.local, "err", "")


def record(name: str, ret: int) -> None:
    CALLS.append((name, ret))
    path = os.environ.get("ACL_DOUBLE_TRACE")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{name} {ret}\n")


def injected(name: str) -> int:
    """``ACL_DOUBLE_FAIL=<call>:<code>[:<nth>]``: the nth call of ``<call>`` (default every one) fails."""
    spec = os.environ.get("ACL_DOUBLE_FAIL", "")
    for item in filter(None, spec.split(",")):
        parts = item.split(":")
        if parts[0] != name:
            continue
        S.fail_counts[name] = S.fail_counts.get(name, 0) + 1
        nth = int(parts[2]) if len(parts) > 2 else None
        if nth is None or S.fail_counts[name] == nth:
            set_error(f"EE9999: injected failure of {name} (ACL_DOUBLE_FAIL)")
            return int(parts[1])
    return SUCCESS


def ints(qualname: str, *args: Any) -> None:
    """The C extension's PyArg_ParseTuple: integers only (bool is an int in C too)."""
    for a in args:
        if not isinstance(a, int):
            raise TypeError(f"{qualname} args parse failed")


def fail(code: int, msg: str) -> int:
    set_error(msg)
    return code


def need_init(name: str) -> int:
    if not S.initialized:
        return fail(UNINITIALIZE, f"EH9999: {name}: acl is not initialized (call acl.init first)")
    return injected(name)


def current_ctx() -> int | None:
    ctx = getattr(S.local, "ctx", None)
    return ctx if ctx in S.contexts else None


def need_ctx(name: str) -> int:
    ret = need_init(name)
    if ret:
        return ret
    if current_ctx() is None:
        return fail(RT_CONTEXT_NULL, f"EE1001: {name}: the current context is null on this thread "
                    "(call acl.rt.set_device, create_context or set_context in this thread)")
    return SUCCESS


# -- memory ------------------------------------------------------------------------------------

def dev_alloc(size: int) -> int:
    with S.lock:
        addr = S.next_dev
        S.next_dev += (size + ALIGN - 1) // ALIGN * ALIGN + 4096  # guard gap: overruns never hit a neighbour
        S.blocks[addr] = Block(addr, size, bytearray(size), current_ctx() or 0)
        bisect.insort(S.bases, addr)
        return addr


def dev_find(addr: int, count: int) -> tuple[Block, int] | None:
    """(block, offset) when [addr, addr + count) lies inside one live device allocation."""
    i = bisect.bisect_right(S.bases, addr) - 1
    if i < 0:
        return None
    b = S.blocks[S.bases[i]]
    off = addr - b.addr
    return (b, off) if 0 <= off and off + count <= b.size else None


def dev_free(addr: int) -> bool:
    with S.lock:
        if addr not in S.blocks:
            return False
        del S.blocks[addr]
        S.bases.remove(addr)
        return True


def is_device(addr: int) -> bool:
    return addr >= DEVICE_BASE


def host_alloc(size: int) -> int:
    buf = ctypes.create_string_buffer(max(size, 1))
    addr = ctypes.addressof(buf)
    with S.lock:
        S.host_blocks[addr] = buf
        bisect.insort(S.host_bases, addr)
    return addr


def host_free(addr: int) -> bool:
    with S.lock:
        if addr not in S.host_blocks:
            return False
        del S.host_blocks[addr]
        S.host_bases.remove(addr)
        return True


def borrow(addr: int, size: int, obj: Any) -> None:
    """Remember a ``bytes_to_ptr``/``numpy_to_ptr`` range (the 1024 most recent) so that a
    memcpy from it can be checked instead of reading arbitrary process memory."""
    with S.lock:
        S.borrowed[addr] = (size, obj)
        S.borrowed.move_to_end(addr)
        while len(S.borrowed) > 1024:
            S.borrowed.popitem(last=False)


def host_ok(addr: int, count: int) -> bool:
    i = bisect.bisect_right(S.host_bases, addr) - 1
    if i >= 0:
        base = S.host_bases[i]
        if addr + count <= base + len(S.host_blocks[base]):
            return True
    for base, (size, _) in S.borrowed.items():
        if base <= addr and addr + count <= base + size:
            return True
    return False


def read(addr: int, count: int) -> bytes:
    if is_device(addr):
        b, off = dev_find(addr, count)  # type: ignore[misc]
        return bytes(b.data[off:off + count])
    return ctypes.string_at(addr, count)


def write(addr: int, data: bytes) -> None:
    if is_device(addr):
        b, off = dev_find(addr, len(data))  # type: ignore[misc]
        b.data[off:off + len(data)] = data
    else:
        ctypes.memmove(addr, data, len(data))


def valid(addr: int, count: int, device: bool) -> bool:
    if device:
        return is_device(addr) and dev_find(addr, count) is not None
    return not is_device(addr) and host_ok(addr, count)
