"""Scoring inside Spark (``mapInArrow``, a local[2] session) and Ray Data (``map_batches`` with a
callable class: the model loaded once per actor), each equal to ``fnn-fast score`` row for row.

They skip, saying why, where pyspark, ray or Java are missing; with FNN_FAST_REQUIRE_ECOSYSTEM
set (CI) they fail instead. The code in them is the README's "Spark and Ray" section."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import require_module, train_csv

from fnn_fast.cli import main
from fnn_fast.score import Scorer

TOLERANCE = 1e-6  # both sides compute the same float32 logits; only the output files differ


def java_missing() -> str | None:
    home = os.environ.get("JAVA_HOME")
    java = (home and shutil.which("java", path=os.path.join(home, "bin"))) or shutil.which("java")
    if java is None:
        return "no Java runtime (java on PATH or under JAVA_HOME): Spark needs Java 17 or later"
    probe = subprocess.run([java, "-version"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"java -version failed: {probe.stderr.strip()}"


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """(model, rows CSV, {id: probability} from ``fnn-fast score --id-column id``)."""
    folder = tmp_path_factory.mktemp("spark_ray")
    model, rows = train_csv(folder)
    out = folder / "scores.parquet"
    command = ["score", "--model", str(model), "--input", str(rows), "--output", str(out)]
    assert main([*command, "--id-column", "id", "--no-progress"]) == 0
    table = pq.read_table(out)
    expected = dict(zip(table["id"].to_pylist(), table["prediction"].to_pylist(), strict=True))
    return model, rows, expected


def assert_equal_to_cli(ids, predictions, expected):
    assert len(ids) == len(expected) and set(ids) == set(expected)
    want = np.array([expected[i] for i in ids])
    np.testing.assert_allclose(np.asarray(predictions), want, rtol=0, atol=TOLERANCE)


@pytest.mark.timeout(600)  # a stuck local cluster fails the test instead of hanging CI
def test_spark_map_in_arrow_equals_cli(scored, monkeypatch):
    require_module("pyspark", "spark")
    reason = java_missing()
    if reason is not None:
        if os.environ.get("FNN_FAST_REQUIRE_ECOSYSTEM"):
            pytest.fail(reason)
        pytest.skip(reason)
    from pyspark.sql import SparkSession

    model, rows, expected = scored
    # the executors' Python: this one, where fnn_fast is installed
    monkeypatch.setenv("PYSPARK_PYTHON", os.environ.get("PYSPARK_PYTHON", sys.executable))
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("fnn-fast-test")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    try:
        model_dir = str(model)

        def score_partition(batches):
            scorer = Scorer(model_dir)  # once per partition, on the executor
            yield from scorer.map_arrow(batches, id_column="id")

        df = spark.read.csv(str(rows), header=True).repartition(3)
        out = df.mapInArrow(score_partition, "id string, prediction double").toPandas()
    finally:
        spark.stop()
    assert_equal_to_cli(out["id"].tolist(), out["prediction"].to_numpy(), expected)


class ScoreBatches:
    """Ray Data's callable class: each actor loads the model once, in __init__."""

    def __init__(self, model_dir, marks=None):
        self.scorer = Scorer(model_dir)
        if marks is not None:  # the test counts the loads
            open(os.path.join(marks, f"loaded-{os.getpid()}-{id(self)}"), "w").close()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.table({"id": batch["id"], "prediction": self.scorer.predict_arrow(batch)})


@pytest.mark.timeout(600)
def test_ray_map_batches_equals_cli(scored, tmp_path, monkeypatch):
    require_module("ray", "ray")
    # Ray puts the driver's working directory on its workers' sys.path: from the repository
    # root that is the source tree, without fnn_fast._C after a plain `pip install .`.
    monkeypatch.chdir(tmp_path)
    import ray
    from ray import cloudpickle

    model, rows, expected = scored
    # the workers cannot import this test module: its class travels by value, as a class in a
    # script's __main__ does
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ds = ray.data.read_csv(str(rows))
        out = ds.map_batches(
            ScoreBatches,
            fn_constructor_args=(str(model), str(tmp_path)),
            batch_format="pyarrow",
            batch_size=200,
            concurrency=2,  # two actors, each loading the model once
            num_cpus=0.5,  # of the 2 CPUs: two 1-CPU actors would starve the read tasks
        ).to_pandas()
    finally:
        ray.shutdown()
    assert_equal_to_cli(out["id"].tolist(), out["prediction"].to_numpy(), expected)
    loads = list(tmp_path.glob("loaded-*"))
    assert 1 <= len(loads) <= 2, loads  # one per actor, not one per batch (8 batches)
