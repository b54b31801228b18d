"""What an input file holds and how to turn it into fields."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields

from fnn_fast.data.bags import POOLINGS, BagSpec
from fnn_fast.data.featindex import load_featindex
from fnn_fast.data.tokens import NUMERIC_MODES, NUMERIC_RULE, NUMERIC_RULES

FORMATS = ("libfm", "criteo", "csv", "parquet")
CRITEO_NUMERIC = [f"I{i}" for i in range(1, 14)]
CRITEO_CATEGORICAL = [f"C{i}" for i in range(1, 27)]
CRITEO_COLUMNS = ["label", *CRITEO_NUMERIC, *CRITEO_CATEGORICAL]  # the implicit header


def criteo_columns_of(first_line_cells: list) -> list[str]:
    """A Criteo file's columns from the cells of its first line: without the label when there
    are 39, else all 40 (lines of another width are then bad lines)."""
    unlabelled = len(first_line_cells) == len(CRITEO_COLUMNS) - 1
    return CRITEO_COLUMNS[1:] if unlabelled else CRITEO_COLUMNS


@dataclass
class Schema:
    """The input format and its columns.

    Field order (``field_names``) for column formats: the numeric columns, then the categorical
    ones, each in declared order. It never depends on a file's column order, so one schema gives
    one field layout for every file it reads (a test file with reordered columns included).
    """

    format: str  # 'libfm' | 'criteo' | 'csv' | 'parquet'
    label: str | None = None  # label column (csv/parquet); None means "label"
    categorical: list[str] = field(default_factory=list)
    numeric: list[str] = field(default_factory=list)
    numeric_mode: str = "bucketize"  # or "value": one feature per numeric field, valued x
    id_column: str | None = None  # passed through to ParsedRows.row_ids, not a feature
    delimiter: str | None = None  # csv; None means ","
    featindex: str | None = None  # libfm: 'field:value<TAB>idx' file; None: field = position
    num_fields: int | None = None  # libfm positional: features per line; None: from 1st line
    numeric_rule: int = NUMERIC_RULE  # how numbers become buckets (fnn_fast.data.tokens)
    # categorical columns holding bags of values: column -> BagSpec's fields (fnn_fast.data.bags)
    multi_valued: dict = field(default_factory=dict)
    bag_pooling: str = "sum"  # of declared bags without a pooling, and of undeclared list columns

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, not {self.format!r}")
        if self.numeric_mode not in NUMERIC_MODES:
            raise ValueError(
                f"numeric_mode must be one of {NUMERIC_MODES}, not {self.numeric_mode!r}"
            )
        if self.numeric_rule not in NUMERIC_RULES:
            raise ValueError(
                f"numeric_rule must be one of {NUMERIC_RULES}, not {self.numeric_rule!r}: "
                "a model saved by a newer fnn_fast?"
            )
        if self.featindex is not None:
            self.featindex = os.fspath(self.featindex)
        self.categorical = list(self.categorical)
        self.numeric = list(self.numeric)
        if self.bag_pooling not in POOLINGS:
            raise ValueError(f"bag_pooling must be one of {POOLINGS}, not {self.bag_pooling!r}")
        self.multi_valued = {
            column: _bag_spec(column, spec, self.bag_pooling)
            for column, spec in dict(self.multi_valued).items()
        }
        if self.format == "libfm":
            if self.categorical or self.numeric or self.multi_valued:
                raise ValueError(
                    "libfm files have no named columns: give no numeric/categorical/multi-valued "
                    "(a field repeated in a line is multi-valued already)"
                )
            return
        features = self.numeric + self.categorical
        if not features:
            raise ValueError(
                f"a {self.format} schema needs numeric and/or categorical columns: name them "
                "with --numeric and/or --categorical (comma-separated column names)"
            )
        repeated = sorted({c for c in features if features.count(c) > 1})
        if repeated:
            raise ValueError(f"columns declared more than once: {repeated}")
        for special in (self.label_column, self.id_column):
            if special in features:
                raise ValueError(f"column {special!r} cannot be both a feature and label/id")
        self._check_bags()
        if self.format == "criteo":
            unknown = [
                c
                for c in [*features, self.label_column, self.id_column]
                if c is not None and c not in CRITEO_COLUMNS
            ]
            if unknown:
                raise ValueError(f"not Criteo columns (label, I1..I13, C1..C26): {unknown}")

    def _check_bags(self) -> None:
        for column, spec in self.multi_valued.items():
            if column not in self.categorical:
                raise ValueError(
                    f"multi-valued column {column!r} must be a categorical column: add it to "
                    "--categorical"
                )
            if self.format == "parquet":
                continue
            delimiter = "\t" if self.format == "criteo" else self.delimiter or ","
            if spec["separator"] is None:
                raise ValueError(
                    f"multi-valued column {column!r} needs a separator in {self.format} text "
                    f"(--multi-valued {column}:SEP, say {column}:pipe for 'a|b|c')"
                )
            if spec["separator"] == delimiter or spec["separator"] in ("\n", "\r"):
                raise ValueError(
                    f"multi-valued column {column!r}: its separator {spec['separator']!r} "
                    "separates the file's columns or lines; choose another (pipe, semicolon...)"
                )

    def bag(self, column: str) -> BagSpec | None:
        """The declared bag spec of ``column``; None for a single-valued column."""
        spec = self.multi_valued.get(column)
        return None if spec is None else BagSpec(**spec)

    @classmethod
    def criteo(cls, format: str = "criteo") -> Schema:
        """The Criteo columns; ``format="csv"`` or ``"parquet"`` for the same columns by name."""
        return cls(
            format,
            label="label",
            numeric=list(CRITEO_NUMERIC),
            categorical=list(CRITEO_CATEGORICAL),
        )

    @property
    def label_column(self) -> str:
        return self.label or "label"

    @property
    def field_names(self) -> list[str]:
        if self.format != "libfm":
            return self.numeric + self.categorical
        if self.featindex is not None:
            return list(load_featindex(self.featindex).field_names)
        if self.num_fields is None:
            raise ValueError(
                "positional libfm schema without num_fields: the fields are known "
                "only once a file is read (ParsedRows.field_names)"
            )
        return [f"f{i}" for i in range(self.num_fields)]

    def value_fields(self, field_names) -> list[int]:
        """The fields whose numbers are values backing off to buckets (rule 3): what
        FeatureEncoder.fit takes as ``value_fields``."""
        if self.numeric_mode != "bucketize" or self.numeric_rule != 3:
            return []
        numeric = set(self.numeric)
        return [f for f, name in enumerate(field_names) if name in numeric]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Schema:
        """A schema saved without ``numeric_rule`` predates rule 2: it keeps rule 1, so that a
        model scores numbers exactly as it was trained on them."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown schema keys: {sorted(unknown)}")
        return cls(**{"numeric_rule": 1, **data})


def _bag_spec(column: str, spec: dict, pooling: str) -> dict:
    """A multi-valued column's settings, complete (pooling: the schema's default)."""
    unknown = set(spec) - set(BagSpec.__dataclass_fields__)
    if unknown:
        raise ValueError(f"multi-valued column {column!r}: unknown settings {sorted(unknown)}")
    return BagSpec(**{"pooling": pooling, **spec}).to_dict()
