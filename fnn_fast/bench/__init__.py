"""The benchmark suite behind ``fnn-fast bench`` and ``pytest benchmarks/``.

- :mod:`~fnn_fast.bench.shapes`: shapes named after real click logs, the batches of ids;
- :mod:`~fnn_fast.bench.cases`: the cases (op, model, quality) and the presets listing them;
- :mod:`~fnn_fast.bench.contenders`: who is measured: ``ours`` (fnn_fast's backends, its
  reference under torch.compile), ``peers`` (FBGEMM, plain PyTorch, pytorch-fm, DeepCTR-Torch),
  ``bounds`` (the C++ gather bound, index_select, the bare MLP), on ``base``'s interface;
- :mod:`~fnn_fast.bench.machine`: the machine, and which fnn_fast is measured;
- :mod:`~fnn_fast.bench.traffic`: the byte model behind GB/s;
- :mod:`~fnn_fast.bench.runner`: warmup, median of repeats within a time budget, records;
- :mod:`~fnn_fast.bench.quality`: the equal-quality run on planted data;
- :mod:`~fnn_fast.bench.report`: terminal table, JSON, PNG plots.
"""
