"""``acl.rt``: devices, contexts, streams and memory (ASCEND.md §2.1, §7.2)."""

from __future__ import annotations

import os

from . import _core as _c

ACL_MEMCPY_HOST_TO_HOST, ACL_MEMCPY_HOST_TO_DEVICE, ACL_MEMCPY_DEVICE_TO_HOST, ACL_MEMCPY_DEVICE_TO_DEVICE = 0, 1, 2, 3
_KINDS = {0: (False, False), 1: (False, True), 2: (True, False), 3: (True, True)}  # (src device, dst device)


def _done(name: str, ret: int, value=None, tuple_=False):
    _c.record(name, ret)
    return (value, ret) if tuple_ else ret


def _devices() -> int:
    return int(os.environ.get("ACL_DOUBLE_DEVICES", "1"))


def set_device(device_id: int) -> int:
    _c.ints("acl.rt.set_device", device_id)
    with _c.S.lock:
        ret = _c.need_init("set_device")
        if not ret and not 0 <= device_id < _devices():
            ret = _c.fail(_c.INVALID_DEVICE, f"EE1001: device {device_id} does not exist ({_devices()} device(s))")
        if not ret:
            _c.S.device_refs[device_id] = _c.S.device_refs.get(device_id, 0) + 1
            if device_id not in _c.S.default_ctx:
                h = _c.handle()
                _c.S.contexts[h] = _c.Context(h, device_id, default=True)
                _c.S.default_ctx[device_id] = h
            _c.S.local.ctx = _c.S.default_ctx[device_id]
    return _done("set_device", ret)


def reset_device(device_id: int) -> int:
    _c.ints("acl.rt.reset_device", device_id)
    with _c.S.lock:
        ret = _c.need_init("reset_device")
        if not ret and not _c.S.device_refs.get(device_id):
            ret = _c.fail(_c.INVALID_DEVICE, f"EE1001: device {device_id} was not set")
        if not ret:
            _c.S.device_refs[device_id] -= 1
            if not _c.S.device_refs[device_id]:
                del _c.S.device_refs[device_id]
                _c.S.contexts.pop(_c.S.default_ctx.pop(device_id), None)
    return _done("reset_device", ret)


def get_device():
    ctx = _c.current_ctx()
    ret = _c.need_ctx("get_device")
    return _done("get_device", ret, _c.S.contexts[ctx].device if not ret else 0, True)


def get_device_count():
    ret = _c.need_init("get_device_count")
    return _done("get_device_count", ret, _devices() if not ret else 0, True)


def get_run_mode():
    ret = _c.need_init("get_run_mode")
    return _done("get_run_mode", ret, 1, True)  # ACL_HOST: a host with a PCIe card


def create_context(device_id: int):
    _c.ints("acl.rt.create_context", device_id)
    with _c.S.lock:
        ret = _c.need_init("create_context")
        if not ret and device_id not in _c.S.device_refs:
            ret = _c.fail(_c.INVALID_DEVICE, f"EE1001: create_context: device {device_id} was not set")
        h = 0
        if not ret:
            h = _c.handle()
            _c.S.contexts[h] = _c.Context(h, device_id)
            _c.S.local.ctx = h
    return _done("create_context", ret, h, True)


def set_context(context: int) -> int:
    _c.ints("acl.rt.set_context", context)
    ret = _c.need_init("set_context")
    if not ret and context not in _c.S.contexts:
        ret = _c.fail(_c.INVALID_PARAM, f"EE1001: set_context: unknown context {hex(context)}")
    if not ret:
        _c.S.local.ctx = context
    return _done("set_context", ret)


def get_context():
    ret = _c.need_ctx("get_context")
    return _done("get_context", ret, _c.current_ctx() or 0, True)


def destroy_context(context: int) -> int:
    _c.ints("acl.rt.destroy_context", context)
    with _c.S.lock:
        ret = _c.need_init("destroy_context")
        ctx = _c.S.contexts.get(context)
        if not ret and (ctx is None or ctx.default):
            ret = _c.fail(_c.INVALID_PARAM, f"EE1001: destroy_context: {hex(context)} is not a created context")
        if not ret:
            del _c.S.contexts[context]
            for s in [s for s, c in _c.S.streams.items() if c == context]:
                del _c.S.streams[s]
    return _done("destroy_context", ret)


def create_stream():
    with _c.S.lock:
        ret = _c.need_ctx("create_stream")
        h = 0
        if not ret:
            h = _c.handle()
            _c.S.streams[h] = _c.current_ctx()
    return _done("create_stream", ret, h, True)


def destroy_stream(stream: int) -> int:
    _c.ints("acl.rt.destroy_stream", stream)
    ret = _c.need_ctx("destroy_stream")
    if not ret and _c.S.streams.pop(stream, None) is None:
        ret = _c.fail(_c.INVALID_PARAM, f"EE1001: destroy_stream: unknown stream {hex(stream)}")
    return _done("destroy_stream", ret)


def synchronize_stream(stream: int) -> int:
    _c.ints("acl.rt.synchronize_stream", stream)
    ret = _c.need_ctx("synchronize_stream")
    if not ret and stream not in _c.S.streams:
        ret = _c.fail(_c.INVALID_PARAM, f"EE1001: synchronize_stream: unknown stream {hex(stream)}")
    return _done("synchronize_stream", ret)


def malloc(size: int, policy: int):
    _c.ints("acl.rt.malloc", size, policy)
    ret = _c.need_ctx("malloc")
    if not ret and (size <= 0 or policy not in (0, 1, 2)):
        ret = _c.fail(_c.INVALID_PARAM, f"EH9999: malloc: size {size} / policy {policy} invalid")
    return _done("malloc", ret, _c.dev_alloc(size) if not ret else 0, True)


def free(dev_ptr: int) -> int:
    _c.ints("acl.rt.free", dev_ptr)
    ret = _c.need_ctx("free")
    if not ret and not _c.dev_free(dev_ptr):
        ret = _c.fail(_c.INVALID_PARAM, f"EE1001: free: {hex(dev_ptr)} is not an allocation (freed twice?)")
    return _done("free", ret)


def malloc_host(size: int):
    _c.ints("acl.rt.malloc_host", size)
    ret = _c.need_ctx("malloc_host")
    if not ret and size <= 0:
        ret = _c.fail(_c.INVALID_PARAM, f"EH9999: malloc_host: size {size} invalid")
    return _done("malloc_host", ret, _c.host_alloc(size) if not ret else 0, True)


def free_host(host_ptr: int) -> int:
    _c.ints("acl.rt.free_host", host_ptr)
    ret = _c.need_ctx("free_host")
    if not ret and not _c.host_free(host_ptr):
        ret = _c.fail(_c.INVALID_PARAM, f"EE1001: free_host: {hex(host_ptr)} is not a host allocation")
    return _done("free_host", ret)


def _copy(name: str, dst: int, dst_max: int, src: int, count: int, kind: int) -> int:
    ret = _c.need_ctx(name)
    if ret:
        return ret
    if kind not in _KINDS:
        return _c.fail(_c.INVALID_PARAM, f"EH9999: {name}: kind {kind} invalid")
    if count > dst_max or count < 0:
        return _c.fail(_c.INVALID_PARAM, f"EH9999: {name}: count {count} > dst_max {dst_max}")
    src_dev, dst_dev = _KINDS[kind]
    if not _c.valid(dst, dst_max, dst_dev):
        return _c.fail(_c.INVALID_PARAM, f"EH9999: {name}: dst {hex(dst)} (max {dst_max}) is not "
                       f"{'device' if dst_dev else 'host'} memory of that size (kind {kind})")
    if not _c.valid(src, count, src_dev):
        return _c.fail(_c.INVALID_PARAM, f"EH9999: {name}: src {hex(src)} ({count} bytes) is not "
                       f"{'device' if src_dev else 'host'} memory of that size (kind {kind})")
    if count:
        _c.write(dst, _c.read(src, count))
    return _c.SUCCESS


def memcpy(dst: int, dst_max: int, src: int, count: int, kind: int) -> int:
    _c.ints("acl.rt.memcpy", dst, dst_max, src, count, kind)
    return _done("memcpy", _copy("memcpy", dst, dst_max, src, count, kind))


def memcpy_async(dst: int, dst_max: int, src: int, count: int, kind: int, stream: int) -> int:
    _c.ints("acl.rt.memcpy_async", dst, dst_max, src, count, kind, stream)
    ret = _copy("memcpy_async", dst, dst_max, src, count, kind)
    if not ret and stream not in _c.S.streams:
        ret = _c.fail(_c.INVALID_PARAM, f"EE1001: memcpy_async: unknown stream {hex(stream)}")
    return _done("memcpy_async", ret)


def memset(dev_ptr: int, max_size: int, value: int, count: int) -> int:
    _c.ints("acl.rt.memset", dev_ptr, max_size, value, count)
    ret = _c.need_ctx("memset")
    if not ret and (count > max_size or not _c.valid(dev_ptr, max_size, _c.is_device(dev_ptr))):
        ret = _c.fail(_c.INVALID_PARAM, f"EH9999: memset: {hex(dev_ptr)} / {count} > {max_size}")
    if not ret and count:
        _c.write(dev_ptr, bytes([value & 0xFF]) * count)
    return _done("memset", ret)
