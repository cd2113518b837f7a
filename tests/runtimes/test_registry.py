"""The backend registry: built-ins, register_backend, entry-point plugins, clear errors."""

from __future__ import annotations

import textwrap

import onnxruntime
import pytest

from genrec.bundle import Bundle
from genrec.errors import BundleError, ConfigError, GenrecError, MissingBackend
from genrec.runtimes import Backend, available_backends, generate, get_backend, recommend, register_backend
from genrec.runtimes.registry import _REGISTRY


def test_unknown_backend_lists_the_available_ones(bundles):
    with pytest.raises(GenrecError, match="unknown backend 'tensorrt'; available: ascend, onnxruntime, openvino, torch, torch\\.compile"):
        get_backend("tensorrt", bundles["sasrec"])


def test_options_a_backend_does_not_take_are_refused_by_name(bundles):
    with pytest.raises(ConfigError, match="backend 'torch' takes no option 'provider'; its options: device"):
        get_backend("torch", bundles["sasrec"], provider="cpu")
    with pytest.raises(BundleError, match="no 'fp16' variant \\(available: fp32\\)"):
        get_backend("onnxruntime", bundles["sasrec"], precision="fp16")


@pytest.mark.skipif("CUDAExecutionProvider" in onnxruntime.get_available_providers(), reason="has CUDA")
def test_missing_provider_lists_what_this_onnxruntime_has(bundles):
    with pytest.raises(MissingBackend, match="lacks \\(available: .*CPUExecutionProvider"):
        get_backend("onnxruntime", bundles["sasrec"], provider="cuda")
    with pytest.raises(MissingBackend, match="CANNExecutionProvider"):
        get_backend("onnxruntime", bundles["sasrec"], provider="cann", provider_options={"npu_mem_limit": "1"})


def test_torch_npu_without_torch_npu_says_what_to_install(bundles):
    pytest.importorskip("torch")
    try:
        import torch_npu  # noqa: F401
        pytest.skip("torch_npu is installed")
    except ImportError:
        pass
    with pytest.raises(MissingBackend, match="pip install torch-npu.*set_env.sh"):
        get_backend("torch", bundles["sasrec"], device="npu")


def test_register_backend_receives_a_verified_bundle(bundles, requests):
    seen = {}

    def factory(bundle, *, flavour="plain"):
        seen["bundle"], seen["flavour"] = bundle, flavour
        return get_backend("onnxruntime", bundle)

    register_backend("mine", factory)
    try:
        with get_backend("mine", str(bundles["sasrec"]), flavour="spicy") as backend:
            assert isinstance(backend, Backend)
            assert isinstance(seen["bundle"], Bundle) and seen["flavour"] == "spicy"
            assert len(recommend(backend, requests[:2], 3)) == 2
        assert "mine" in available_backends()
    finally:
        _REGISTRY.pop("mine", None)


def test_entry_point_plugins_drive_the_same_loop(tmp_path, monkeypatch, bundles, requests):
    """A package declaring a ``genrec.backends`` entry point is found without any registration."""
    (tmp_path / "fake_ascend.py").write_text(textwrap.dedent("""
        from genrec.runtimes.onnxrt import OrtBackend

        class AscendLike(OrtBackend):
            name = "ascend-like"
    """))
    info = tmp_path / "fake_ascend-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-ascend\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[genrec.backends]\nascend-like = fake_ascend:AscendLike\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert "ascend-like" in available_backends()
        with get_backend("ascend-like", bundles["sasrec"], threads=1) as backend:
            assert backend.name == "ascend-like"
            ref = get_backend("onnxruntime", bundles["sasrec"])
            assert [r.items for r in generate(backend, requests[:3], 2)] == \
                [r.items for r in generate(ref, requests[:3], 2)]
    finally:
        _REGISTRY.pop("ascend-like", None)
