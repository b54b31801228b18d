"""Scoring full batches on a GPU by replaying a captured CUDA graph: one launch per batch
instead of one per kernel."""

from __future__ import annotations

import torch


class CapturedModel:
    """Calls ``model(ids, values)`` on CUDA tensors of one batch size through a CUDA graph,
    captured at the first call (one graph with values, one without). Inference only: the
    caller checks the ids on the host first, as a captured graph cannot check (nor sync)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._graphs: dict = {}

    def __call__(self, ids: torch.Tensor, values: torch.Tensor | None) -> torch.Tensor:
        key = values is not None
        if key not in self._graphs:
            static_ids, static_values = ids.clone(), None if values is None else values.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm up outside the graph, as capture requires
                for _ in range(2):
                    self.model(static_ids, static_values)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.model(static_ids, static_values)
            self._graphs[key] = (graph, static_ids, static_values, static_out)
        graph, static_ids, static_values, static_out = self._graphs[key]
        static_ids.copy_(ids)
        if values is not None:
            static_values.copy_(values)
        graph.replay()
        return static_out.clone()
