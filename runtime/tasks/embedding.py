"""What text and image embeddings share: the request's output options and the post-processing of
a tower's output, defined once (Matryoshka truncation, then normalisation, then the output
precision)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.errors import DimensionsOutOfRange
from runtime.postprocess import finish_embeddings
from runtime.quantize import output_ranges, quantize
from runtime.repository.manifest import TowerSpec


@dataclass(frozen=True)
class EmbeddingOptions:
    normalize: bool = True
    # Keep the first n_dims dimensions (Matryoshka); None: all.
    n_dims: int | None = None
    # runtime.quantize.PRECISIONS
    precision: str = "float32"


class DenseOutput:
    """The post-processing of one tower's output for `options`, checked on construction (before
    any work): the dimensions exist, and the precision's ranges were calibrated."""

    def __init__(self, spec: TowerSpec, options: EmbeddingOptions) -> None:
        n_dims = options.n_dims
        if n_dims is not None and not 1 <= n_dims <= spec.dim:
            raise DimensionsOutOfRange(n_dims, spec.dim)
        self.options = options
        self.ranges = output_ranges(options.precision, spec, options.normalize, n_dims)

    def __call__(self, outputs: np.ndarray) -> np.ndarray:
        options = self.options
        embeddings = finish_embeddings(outputs, options.normalize, options.n_dims)
        return quantize(embeddings, options.precision, self.ranges)
