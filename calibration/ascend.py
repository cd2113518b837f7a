"""int8 on Ascend: Huawei AMCT's deploy model, never a QDQ graph.

ATC does not parse ONNX QuantizeLinear/DequantizeLinear (ASCEND.md §6), so the int8 variants
made for onnxruntime must never reach it (``genrec convert`` reads only the base graphs). int8
on Ascend is AMCT's post-training quantisation (``amct_onnx``: ``create_quant_config``,
``quantize_model``, calibration batches through onnxruntime with ``amct.AMCT_SO``,
``save_model``), whose ``*_deploy_model.onnx`` ATC then compiles. AMCT ships with CANN and is
not installable from PyPI; where it is not importable this refuses with one line saying what
to install.

fp16 on Ascend is not a separate graph: ATC's precision modes make it (``genrec convert
--precision fp16``, scoring/TopK kept fp32 with ``--keep_dtype``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from genrec.errors import ConfigError, MissingBackend

__all__ = ["quantize_for_ascend", "AMCT_HINT"]

AMCT_HINT = ("int8 on Ascend needs Huawei AMCT (the Python package amct_onnx from the CANN toolkit's "
             "amct_onnx wheel, e.g. pip install $ASCEND_TOOLKIT_HOME/tools/amct/amct_onnx/*.whl after "
             "sourcing CANN's set_env.sh); it is not importable here. ATC cannot compile onnxruntime's QDQ "
             "int8 graphs, so none is produced")


def quantize_for_ascend(bundle: str | os.PathLike[str], precision: str, calib_data: str | os.PathLike[str], *,
                        calib_users: int = 256, seed: int = 0, say: Callable[[str], None] | None = None) -> Path:
    """AMCT deploy models of the bundle's graphs, calibrated on the same real inputs as
    int8-static, under ``<bundle>-amct/`` (outside the bundle: ATC compiles them with
    ``genrec convert`` once AMCT is set up); returns that directory."""
    if precision == "fp16":
        raise ConfigError("fp16 on Ascend comes from ATC's precision modes: genrec convert BUNDLE --soc-version SOC "
                          "--precision fp16")
    if precision == "int8-dynamic":
        raise ConfigError("Ascend has no dynamic int8; use --precision int8-static --target ascend (AMCT)")
    try:
        import amct_onnx as amct  # noqa: F401 - only importable on a CANN host
    except ImportError:
        raise MissingBackend(AMCT_HINT) from None
    from genrec.bundle import load_bundle

    from .data import record_feeds, split_users

    say = say or (lambda msg: None)
    b = load_bundle(bundle)
    users = split_users(calib_data, None, b.id_map, calib_users, 2, seed)
    feeds = record_feeds(b, users, seed=seed)
    out = b.path.parent / f"{b.path.name}-amct"
    import onnxruntime as ort

    from genrec.atomic import atomic_directory

    with atomic_directory(out, force=True) as tmp:  # all three deploy models, or none
        for g, spec in b.manifest.graphs.items():
            src, cfg = b.path / spec.file, tmp / f"{g}.quant.cfg"
            modified, record = tmp / f"{g}.modified.onnx", tmp / f"{g}.record.txt"
            amct.create_quant_config(str(cfg), str(src), skip_layers=None, batch_num=len(feeds.graphs[g]))
            amct.quantize_model(str(cfg), str(src), str(modified), str(record))
            sess = ort.InferenceSession(str(modified), amct.AMCT_SO, providers=["CPUExecutionProvider"])
            names = {i.name for i in sess.get_inputs()}
            for call in feeds.graphs[g]:
                sess.run(None, {k: v for k, v in call.items() if k in names})
            amct.save_model(str(modified), str(record), str(tmp / g))
    for g in b.manifest.graphs:
        say(f"{g}: AMCT deploy model {out / (g + '_deploy_model.onnx')}")
    return out
