"""Backends and the shared decoding loop (ARCHITECTURE.md §5–6).

    from genrec.runtimes import Request, get_backend, recommend, generate, SearchParams

    with get_backend("onnxruntime", "bundle/", provider="cpu") as backend:
        recs = recommend(backend, [Request("u1", items=[12, 7, 40])], k=10)
        slates = generate(backend, requests, steps=5, params=SearchParams("beam", num_beams=4))

Backends: ``torch`` (the reference), ``onnxruntime``, and any package registering a
``genrec.backends`` entry point. Importing this package loads neither torch nor onnxruntime.
"""

from .base import Backend, BackendBase, BundleDims, PrefillBatch, State, StepOutput
from .decoding import SearchParams, generate, rank, recommend
from .registry import available_backends, get_backend, register_backend
from .requests import Request, Result

__all__ = [
    "Backend", "BackendBase", "BundleDims", "PrefillBatch", "Request", "Result", "SearchParams",
    "State", "StepOutput", "available_backends", "generate", "get_backend", "rank", "recommend",
    "register_backend",
]
