"""Scoring saved models: one click probability per input row, in input order.

- :func:`score_files` (``files``), behind ``fnn-fast score``: inputs larger than memory, read
  ahead in parts (``readers``), written atomically with a manifest so a killed run resumes
  (``output``).
- :class:`Scorer` (``scorer``): a model in memory that scores encoded ids, Arrow record batches
  or pandas DataFrames, for use inside Spark's ``mapInArrow`` or Ray Data's ``map_batches``;
  on a GPU full batches replay a CUDA graph (``cuda_graphs``).
"""

from fnn_fast.score.files import ScoreSummary, score_files
from fnn_fast.score.output import OUTPUT_FORMATS, write_predictions
from fnn_fast.score.scorer import Scorer, predict

__all__ = [
    "OUTPUT_FORMATS",
    "ScoreSummary",
    "Scorer",
    "predict",
    "score_files",
    "write_predictions",
]
