import json

import pytest

from fnn_fast.data import Schema


def test_dict_round_trip_through_json(tmp_path):
    schema = Schema(
        "csv",
        label="click",
        categorical=["a", "b"],
        numeric=["n"],
        numeric_mode="value",
        id_column="id",
        delimiter=";",
    )
    assert Schema.from_dict(json.loads(json.dumps(schema.to_dict()))) == schema
    with pytest.raises(ValueError, match="unknown schema keys"):
        Schema.from_dict({**schema.to_dict(), "colour": "red"})


def test_field_names_per_format(tmp_path):
    assert Schema("csv", categorical=["c1", "c2"], numeric=["n"]).field_names == ["n", "c1", "c2"]
    criteo = Schema.criteo()
    assert criteo.field_names == [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    assert Schema.criteo("parquet").field_names == criteo.field_names
    featindex = tmp_path / "featindex.txt"
    featindex.write_text("hour:1\t0\nday:2\t1\nhour:2\t2\n")
    assert Schema("libfm", featindex=featindex).field_names == ["hour", "day"]
    assert Schema("libfm", num_fields=3).field_names == ["f0", "f1", "f2"]
    with pytest.raises(ValueError, match="num_fields"):
        Schema("libfm").field_names  # noqa: B018


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(format="tsv"), "format must be one of"),
        (dict(format="csv", categorical=["a"], numeric_mode="log"), "numeric_mode"),
        (dict(format="csv"), "needs numeric and/or categorical"),
        (dict(format="csv", categorical=["a", "a"]), "more than once"),
        (dict(format="csv", categorical=["label"]), "both a feature and label/id"),
        (dict(format="criteo", categorical=["C27"]), "not Criteo columns"),
        (dict(format="libfm", categorical=["a"]), "no named columns"),
    ],
)
def test_invalid_schemas_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Schema(**kwargs)
