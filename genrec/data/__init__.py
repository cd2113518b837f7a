"""Data layer: read interaction files, map item ids, split leave-one-out, pad batches.

Why one package: training, export calibration, evaluation and serving must all see the same
sequences and the same item ids, so they share these few entry points.
"""

from genrec.data.batching import pad_batch
from genrec.data.item_map import ItemMap
from genrec.data.readers import FORMATS, read_sequences
from genrec.data.sequences import SequenceData
from genrec.data.split import Examples, Split, leave_one_out

__all__ = [
    "FORMATS",
    "Examples",
    "ItemMap",
    "SequenceData",
    "Split",
    "leave_one_out",
    "pad_batch",
    "read_sequences",
]
