"""The uint8 image input every exported image tower shares."""

from __future__ import annotations

import torch


class ImageInput(torch.nn.Module):
    """uint8 NCHW in; scaling to [0, 1] and mean/std normalisation run inside the graph, so a
    GPU receives a quarter of the bytes that float32 input would need. `method` is the model
    method that maps normalised pixels to the tower's output (`encode_image`, `forward`)."""

    def __init__(
        self, model: torch.nn.Module, mean: list[float], std: list[float], method: str = "forward"
    ) -> None:
        super().__init__()
        self.model = model
        self.method = method
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        normalised = (pixels.float() / 255.0 - self.mean) / self.std
        return getattr(self.model, self.method)(normalised)
