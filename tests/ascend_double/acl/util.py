"""``acl.util``: pointers to host bytes and back (ASCEND.md §2.1)."""

from __future__ import annotations

import ctypes
import warnings

import numpy as np

from . import _core as _c


def bytes_to_ptr(b: bytes) -> int:
    """A pointer into ``b``'s own buffer (no copy): keep ``b`` alive while it is used."""
    if not isinstance(b, bytes):
        raise TypeError("acl.util.bytes_to_ptr args parse failed")
    addr = ctypes.cast(ctypes.c_char_p(b), ctypes.c_void_p).value or 0
    _c.borrow(addr, len(b), b)
    return addr


def ptr_to_bytes(ptr: int, size: int) -> bytes:
    """A copy of ``size`` bytes of host memory at ``ptr``."""
    _c.ints("acl.util.ptr_to_bytes", ptr, size)
    if _c.is_device(ptr) or not _c.host_ok(ptr, size):
        raise ValueError(f"acl double: ptr_to_bytes({hex(ptr)}, {size}) is not host memory from malloc_host or "
                         "bytes_to_ptr (a device pointer cannot be read from the host)")
    return ctypes.string_at(ptr, size)


def numpy_to_ptr(arr: np.ndarray) -> int:
    warnings.warn("numpy_to_ptr will be deprecated. Please use acl.util.bytes_to_ptr", DeprecationWarning,
                  stacklevel=2)
    addr = int(arr.ctypes.data)
    _c.borrow(addr, int(arr.nbytes), arr)
    return addr


def ptr_to_numpy(ptr: int, shape: tuple, npy_type: int) -> np.ndarray:
    warnings.warn("ptr_to_numpy will be deprecated. Please use acl.util.ptr_to_bytes", DeprecationWarning,
                  stacklevel=2)
    dtype = np.dtype(np.sctypeDict[npy_type]) if npy_type in np.sctypeDict else None
    if dtype is None:
        raise TypeError("acl.util.ptr_to_numpy args parse failed")
    n = int(np.prod(shape)) * dtype.itemsize
    if _c.is_device(ptr) or not _c.host_ok(ptr, n):
        raise ValueError(f"acl double: ptr_to_numpy({hex(ptr)}) is not host memory")
    return np.frombuffer((ctypes.c_char * n).from_address(ptr), dtype=dtype).reshape(shape)
