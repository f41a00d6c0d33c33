"""FP16 for strongly typed TensorRT (11.x), where the precision lives in the ONNX graph itself.

NVIDIA Model Optimizer's AutoCast (the route TensorRT 11's own samples take) converts the graph
to float16 except the ops that overflow or lose accuracy in half precision (normalisation,
softmax, and the reductions and element-wise ops behind pooling and L2 normalisation), and
keeps the graph's inputs and outputs as they were, so the server feeds and reads the same
arrays. The conversion runs on CPU and is checked with ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path

import onnx

KEEP_FP32 = [
    "LayerNormalization",
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceL2",
    "Pow",
    "Sqrt",
    "Div",
]


def convert_to_fp16(source: Path, target: Path) -> None:
    from modelopt.onnx.autocast import convert_to_mixed_precision

    converted = convert_to_mixed_precision(
        onnx_path=str(source),
        low_precision_type="fp16",
        op_types_to_exclude=KEEP_FP32,
        keep_io_types=True,
    )
    onnx.save(converted, str(target))
