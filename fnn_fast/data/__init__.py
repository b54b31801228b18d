"""Reading click logs: parsing text into keys (:func:`read_rows`, cached by :func:`load_rows`),
then mapping keys to dense feature ids (:class:`FeatureEncoder`)."""

from fnn_fast.data.cache import load_rows, open_rows, write_rows
from fnn_fast.data.encoder import FeatureEncoder
from fnn_fast.data.errors import DataError
from fnn_fast.data.hashing import HashedEncoder
from fnn_fast.data.readers import PAD_KEY, ParsedRows, read_rows
from fnn_fast.data.schema import Schema

__all__ = [
    "PAD_KEY",
    "DataError",
    "FeatureEncoder",
    "HashedEncoder",
    "ParsedRows",
    "Schema",
    "load_rows",
    "open_rows",
    "read_rows",
    "write_rows",
]
