"""torch -> ONNX bundle export, its blocking checks, the ATC-compatibility lint.

``export_bundle`` is the one entry point; ``genrec export`` / ``genrec-export`` call it.
"""

from .checks import DEFAULT_ATOL, DEFAULT_RTOL
from .export import DEFAULT_GEARS, export_bundle, resolve_dims
from .graphs import GRAPHS

__all__ = ["DEFAULT_ATOL", "DEFAULT_GEARS", "DEFAULT_RTOL", "GRAPHS", "export_bundle", "resolve_dims"]
