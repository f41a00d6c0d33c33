"""Export a torch module to an ONNX graph with dynamic axes, and check the result."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

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
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
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
    onnx.checker.check_model(str(path))
