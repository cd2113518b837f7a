"""genrec-deploy: export, verify, serve and compare generative recommenders.

The core every stage shares lives here: the model zoo (``genrec.models``), the checkpoint
format (``genrec.checkpoint``), dataset readers (``genrec.data``), ranking metrics, the
bundle manifest (``genrec.bundle``) and the ``genrec`` CLI. Stages import it, never the
reverse: ``genrec.exporter``, ``genrec.runtimes`` and ``genrec.calibration``.
Heavy imports (torch, onnx, onnxruntime) happen inside the modules that need them so that
``import genrec`` and ``genrec --help`` stay fast.
"""

__version__ = "0.1.0"
