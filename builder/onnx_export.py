"""Export a torch module to an ONNX graph with dynamic axes, and check the result."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import onnx
import torch

from runtime.repository.manifest import TensorSpec, TowerSpec

OPSET = 17  # LayerNormalization as one op; TensorRT 10 parses opsets 9-20.


def export_onnx(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_name: str,
    dynamic_axes: dict[str, dict[int, str]],
) -> None:
    """Trace `module` on `example` and write it to `path`, then validate it with onnx's checker.

    The TorchScript exporter is used: its graphs parse in every TensorRT 10 release.
    """
    module.eval()
    # nn.MultiheadAttention's inference fast path is one fused op that ONNX cannot express.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        _export(module, example, path, input_names, output_name, dynamic_axes)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    onnx.checker.check_model(str(path))


def export_token_model(
    module: torch.nn.Module,
    example: Mapping[str, torch.Tensor],
    path: Path,
    input_names: list[str],
    output_name: str,
) -> None:
    """`export_onnx` for a model of token inputs: each is (batch, sequence), and the output's
    first axis is the batch."""
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    example_inputs = tuple(example[name] for name in input_names)
    axes[output_name] = {0: "batch"}
    export_onnx(module, example_inputs, path, input_names, output_name, axes)


def token_tower(
    onnx: str, input_names: list[str], output: str, dim: int, max_batch: int, max_length: int
) -> TowerSpec:
    """The manifest's tower for a graph `export_token_model` wrote: token inputs, one
    `dim`-wide float32 row per batch item."""
    return TowerSpec(
        onnx=onnx,
        inputs=[TensorSpec(n, "int64", ["batch", "sequence"]) for n in input_names],
        output=TensorSpec(output, "float32", ["batch", dim]),
        dim=dim,
        max_batch=max_batch,
        max_seq_len=max_length,
    )


def _export(module, example, path, input_names, output_name, dynamic_axes) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=input_names,
            output_names=[output_name],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
