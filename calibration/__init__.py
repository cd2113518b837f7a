"""fp16 and int8 bundle variants, calibrated on real histories and gated by ranking metrics.

    from genrec.calibration import quantize_bundle
    info = quantize_bundle("bundle/", "int8-static", "data/beauty-slice", max_ndcg_loss=0.01)

``genrec quantize`` is the command. Modules: ``data`` (disjoint calibration/judging users,
recorded graph inputs), ``recipes`` (onnxruntime.quantization and onnxconverter-common calls),
``groups`` (the node groups the fallback search may keep fp32), ``gate`` (paired per-user
metrics and confidence intervals), ``search`` (the fallback search), ``quantize`` (the atomic
write into the bundle), ``ascend`` (AMCT for int8 on Ascend).
"""

from __future__ import annotations

from .recipes import PRECISIONS

__all__ = ["PRECISIONS", "quantize_bundle"]


def __getattr__(name: str):
    if name == "quantize_bundle":  # lazily: importing genrec.calibration loads no onnxruntime
        from .quantize import quantize_bundle

        return quantize_bundle
    raise AttributeError(name)
