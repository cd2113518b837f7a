"""pyACL plumbing for the ``ascend`` backend: named errors, the process-wide runtime, traffic.

Kept apart from ``runtimes/ascend.py`` so that the backend reads as the graph-running logic
only. Nothing here imports ``acl``: the module object is passed in (the backend imports it
when it is created), so ``import genrec`` never needs CANN.

- ``AclError``: every non-zero ``ret`` becomes one, naming the call, the code (with its name
  from ASCEND.md §2.4 where known) and ``acl.get_recent_err_msg()``: never a silently wrong
  result.
- ``AclRuntime``: ``acl.init`` -> ``rt.set_device`` -> ``rt.create_context`` -> ``rt.create_stream``
  once per process and device, reference-counted so that several backends share them; the last
  release destroys the stream and context and resets the device in the documented order
  (§2.3). ``acl.finalize`` runs at interpreter exit, not at the last release: the docs allow
  one ``acl.init`` per process (a second one is ACL_ERROR_REPEAT_INITIALIZE) and say nothing of
  init after finalize, so a process that opens a second backend later must not depend on it.
  ``bind()`` makes the context current in the calling thread (contexts are per thread).
- ``Traffic``: bytes and copies per direction (H2D, D2H, D2D), per kind of call, and the
  seconds each graph's execute took: ``genrec-run --stats`` and the hardware selftest's report.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from genrec.errors import GenrecError

__all__ = ["ACL_ERRORS", "AclError", "AclRuntime", "Traffic", "check"]

ACL_ERRORS = {
    100000: "ACL_ERROR_INVALID_PARAM", 100001: "ACL_ERROR_UNINITIALIZE", 100002: "ACL_ERROR_REPEAT_INITIALIZE",
    100003: "ACL_ERROR_INVALID_FILE", 100011: "ACL_ERROR_INVALID_MODEL_ID", 100017: "ACL_ERROR_MODEL_INPUT_NOT_MATCH",
    100018: "ACL_ERROR_MODEL_OUTPUT_NOT_MATCH", 100019: "ACL_ERROR_MODEL_NOT_DYNAMIC", 107002: "ACL_ERROR_RT_CONTEXT_NULL",
    200000: "ACL_ERROR_BAD_ALLOC", 200002: "ACL_ERROR_INVALID_DEVICE", 500000: "ACL_ERROR_INTERNAL_ERROR",
    500002: "ACL_ERROR_GE_FAILURE", 500003: "ACL_ERROR_RT_FAILURE", 145000: "ACL_ERROR_GE_PARAM_INVALID",
    145013: "ACL_ERROR_GE_DYNAMIC_BATCH_SIZE_INVALID", 145021: "ACL_ERROR_GE_SHAPE_INVALID",
    145022: "ACL_ERROR_GE_DATATYPE_INVALID", 545001: "ACL_ERROR_GE_LOAD_MODEL",
}
MEMCPY_H2D, MEMCPY_D2H, MEMCPY_D2D = 1, 2, 3
MALLOC_HUGE_FIRST = 0


class AclError(GenrecError):
    """A pyACL call returned non-zero: ``call``, ``code`` and the runtime's own message."""

    def __init__(self, call: str, code: int, detail: str = "", hint: str = ""):
        self.call, self.code, self.detail = call, int(code), detail.strip()
        name = ACL_ERRORS.get(self.code, "unknown code")
        text = " ".join(self.detail.split())[:300]
        super().__init__(f"ascend backend: acl.{call} returned {self.code} ({name})"
                         + (f": {text}" if text else "") + (f"; {hint}" if hint else ""))


def check(acl: Any, call: str, ret: int, hint: str = "") -> None:
    """Raise ``AclError`` for a non-zero ``ret`` of ``acl.<call>``."""
    if ret:
        try:
            detail = acl.get_recent_err_msg() or ""
        except Exception:  # noqa: BLE001 - the message is a courtesy; the code is the error
            detail = ""
        raise AclError(call, ret, detail, hint)


class AclRuntime:
    """The process-wide init/device/context/stream, shared by reference count (one per device)."""

    _lock = threading.Lock()
    _by_device: dict[int, "AclRuntime"] = {}
    _initialized: list[Any] = []  # the acl module this process initialized (finalized at exit)

    def __init__(self, acl: Any, device_id: int):
        self.acl, self.device_id = acl, device_id
        self.context = self.stream = 0
        self.refs = 0

    @classmethod
    def acquire(cls, acl: Any, device_id: int) -> "AclRuntime":
        with cls._lock:
            rt = cls._by_device.get(device_id)
            if rt is None:
                if not cls._initialized:
                    ret = acl.init()
                    if ret == 100002:  # someone in this process initialized acl already: theirs to finalize
                        cls._initialized.append(None)
                    else:
                        check(acl, "init", ret)
                        cls._initialized.append(acl)
                        atexit.register(cls._finalize)
                rt = cls(acl, device_id)
                rt._open()
                cls._by_device[device_id] = rt
            rt.refs += 1
            return rt

    def _open(self) -> None:
        acl, done = self.acl, []
        try:
            check(acl, "rt.set_device", acl.rt.set_device(self.device_id))
            done.append("device")
            self.context, ret = acl.rt.create_context(self.device_id)
            check(acl, "rt.create_context", ret)
            done.append("context")
            self.stream, ret = acl.rt.create_stream()
            check(acl, "rt.create_stream", ret)
        except AclError:
            self._close(done)
            raise

    def bind(self) -> None:
        """Make this runtime's context current in the calling thread. On every call, not once
        per thread: another backend (another device) or the caller may have made a different
        context current in this thread meanwhile, and setting it costs one cheap runtime call."""
        check(self.acl, "rt.set_context", self.acl.rt.set_context(self.context))

    def release(self) -> list[str]:
        """Drop one reference; the last one destroys stream and context and resets the device.
        Returns the failures met on the way (release goes on past them)."""
        with self._lock:
            self.refs -= 1
            if self.refs > 0:
                return []
            self._by_device.pop(self.device_id, None)
            self.bind()
            return self._close(["device", "context", "stream"])

    def _close(self, done: list[str]) -> list[str]:
        acl, errors = self.acl, []
        steps: list[tuple[str, Callable[[], int]]] = []
        if "stream" in done:
            steps.append(("rt.destroy_stream", lambda: acl.rt.destroy_stream(self.stream)))
        if "context" in done:
            steps.append(("rt.destroy_context", lambda: acl.rt.destroy_context(self.context)))
        if "device" in done:
            steps.append(("rt.reset_device", lambda: acl.rt.reset_device(self.device_id)))
        for call, fn in steps:
            try:
                check(acl, call, fn())
            except AclError as e:
                errors.append(str(e))
        return errors

    @classmethod
    def _finalize(cls) -> None:
        with cls._lock:
            if cls._initialized and cls._initialized[0] is not None and not cls._by_device:
                cls._initialized[0].finalize()


@dataclass
class Traffic:
    """Host<->device traffic and execute time, per kind of call (prefill, step, rank, reorder)."""

    calls: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, dict[str, int]] = field(default_factory=dict)
    copies: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def call(self, kind: str) -> None:
        self.calls[kind] = self.calls.get(kind, 0) + 1

    def add(self, kind: str, direction: str, nbytes: int) -> None:
        b = self.bytes.setdefault(kind, {"h2d": 0, "d2h": 0, "d2d": 0})
        c = self.copies.setdefault(kind, {"h2d": 0, "d2h": 0, "d2d": 0})
        b[direction] += int(nbytes)
        c[direction] += 1

    def timed(self, graph: str, seconds: float) -> None:
        self.seconds[graph] = self.seconds.get(graph, 0.0) + seconds

    def summary(self) -> dict[str, Any]:
        """Per kind: calls, total bytes and copies per direction, bytes per call; and
        ``per_step`` (the step graph's bytes per call), what the issue asks to show."""
        out: dict[str, Any] = {}
        for kind, n in self.calls.items():
            b = self.bytes.get(kind, {"h2d": 0, "d2h": 0, "d2d": 0})
            out[kind] = {"calls": n, "bytes": dict(b), "copies": dict(self.copies.get(kind, {})),
                         "bytes_per_call": {d: v / n for d, v in b.items()}}
            if kind in self.seconds:
                out[kind]["execute_seconds"] = self.seconds[kind]
                out[kind]["execute_ms_per_call"] = 1e3 * self.seconds[kind] / n
        out["per_step"] = out.get("step", {}).get("bytes_per_call", {"h2d": 0.0, "d2h": 0.0, "d2d": 0.0})
        return out
