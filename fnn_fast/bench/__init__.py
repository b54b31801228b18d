"""The benchmark suite behind ``fnn-fast bench`` and ``pytest benchmarks/``.

- :mod:`~fnn_fast.bench.shapes`: shapes named after real click logs, the batches of ids;
- :mod:`~fnn_fast.bench.cases`: the cases (op, model, quality) and the presets listing them;
- :mod:`~fnn_fast.bench.contenders`: fnn_fast's backends, the peers, the bounds;
- :mod:`~fnn_fast.bench.traffic`: the byte model behind GB/s;
- :mod:`~fnn_fast.bench.runner`: warmup, median of repeats within a time budget, records;
- :mod:`~fnn_fast.bench.quality`: the equal-quality run on planted data;
- :mod:`~fnn_fast.bench.report`: terminal table, JSON, PNG plots.
"""
