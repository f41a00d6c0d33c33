"""TensorRT: `plan` (profiles and plan checks, no GPU needed), `cuda` (the CUDA calls, through
cuda-python) and `engine` (the backend). Nothing is imported here, so `plan` imports on hosts
without TensorRT."""
