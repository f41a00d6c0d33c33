"""Model sources -> ONNX export -> verification -> engine directory."""

from __future__ import annotations

import importlib
import platform
import time
from dataclasses import replace
from importlib import metadata
from pathlib import Path

from builder.errors import BuildError
from builder.options import BuildOptions
from builder.progress import Progress
from builder.sources import check_source, classifies_sequences, is_sparse_encoder
from builder.staging import target_directory
from runtime.repository import Repository, slugify
from runtime.repository.digests import file_digests
from runtime.repository.manifest import Manifest
from runtime.repository.staging import entry_lock, staging_directory

__all__ = ["BuildError", "BuildOptions", "Progress", "build_model", "detect_library"]

# Imported only when used: each pulls in its library (and torch).
LIBRARY_BUILDERS = {
    "sentence_transformers": "builder.sentence_transformer",
    "open_clip": "builder.clip",
    "timm": "builder.timm_classifier",
    "cross_encoder": "builder.cross_encoder",
    "sparse_encoder": "builder.sparse_encoder",
}
SUPPORTED_LIBRARIES = tuple(LIBRARY_BUILDERS)
PROVENANCE_PACKAGES = (
    "torch",
    "sentence-transformers",
    "open_clip_torch",
    "timm",
    "transformers",
    "onnx",
    "onnxruntime",
    "openvino",
)


def detect_library(source: str) -> str:
    """The library a source name implies: timm's `hf_hub:` scheme, open_clip's `hf-hub:` and
    `local-dir:`, else sentence-transformers."""
    if source.startswith("hf_hub:"):
        return "timm"
    if source.startswith(("hf-hub:", "local-dir:")):
        return "open_clip"
    return "sentence_transformers"


def build_model(
    source: str,
    engines: Path,
    name: str | None = None,
    library: str | None = None,
    options: BuildOptions | None = None,
    force: bool = False,
    skip_existing: bool = False,
    progress: Progress | None = None,
) -> Path | None:
    """Build `source` into the repository at `engines` under `name` (default: `source`).

    Returns the model's directory, or None when it exists and `skip_existing` is set.
    """
    progress = progress or Progress()
    options = options or BuildOptions()
    name = name or source
    explicit = library or ("cross_encoder" if options.task is not None else None)
    library = explicit or detect_library(source)
    if library not in SUPPORTED_LIBRARIES:
        raise BuildError(
            f"library {library!r} is not supported yet; supported: {', '.join(SUPPORTED_LIBRARIES)}"
        )
    if options.default_prompt_name is not None and library != "sentence_transformers":
        raise BuildError("--default-prompt-name is for sentence-transformers models")
    if options.max_batch < 1 or (options.max_seq_len is not None and options.max_seq_len < 2):
        raise BuildError("--max-batch must be at least 1 and --max-seq-len at least 2")
    if options.tensorrt is not None:
        from runtime.backends import tensorrt_unavailable

        reason = tensorrt_unavailable()
        if reason is not None:
            raise BuildError(
                f"--tensorrt needs TensorRT and a CUDA GPU: {reason}. Without --tensorrt the "
                "ONNX build works here and serves with ONNX Runtime"
            )
    check_source(source, library)
    if explicit is None and library == "sentence_transformers":
        if classifies_sequences(source):
            library = "cross_encoder"
        elif is_sparse_encoder(source):
            library = "sparse_encoder"
    if options.int8 is not None and library not in ("sentence_transformers", "cross_encoder"):
        raise BuildError("--int8 is for sentence-transformers embedding models and rerankers")
    if options.token_embeddings and library != "sentence_transformers":
        raise BuildError("--token-embeddings is for sentence-transformers embedding models")
    try:
        slug = slugify(name)
    except ValueError as error:
        raise BuildError(str(error)) from error

    repository = Repository(engines)
    with entry_lock(repository.root, slug):
        target = target_directory(repository, name, force)
        if target is None:
            if skip_existing:
                progress.say(f"{name} is already built in {engines}; nothing to do")
                return None
            raise BuildError(f"{name!r} is already in {engines}; pass --force to rebuild it")
        started = time.perf_counter()
        with staging_directory(target) as staging:
            builder = importlib.import_module(LIBRARY_BUILDERS[library])
            manifest = builder.build(source, name, staging, options, progress)
            if manifest.task == "embedding" and "text" in manifest.towers:
                manifest = _calibrated(staging, manifest, progress)
            if options.tensorrt is not None:
                from builder.tensorrt_build import add_plans

                manifest = add_plans(staging, manifest, options.tensorrt, progress)
            manifest = replace(_with_provenance(manifest, started), files=file_digests(staging))
            manifest.write(staging)
    progress.say(f"Built {name} into {target} in {time.perf_counter() - started:.1f} s")
    return target


def _calibrated(staging: Path, manifest: Manifest, progress: Progress) -> Manifest:
    from builder.calibration import CALIBRATION_TEXTS, with_calibration
    from builder.verify import load_staged

    with progress.stage(f"Calibrating int8/uint8 output ranges on {CALIBRATION_TEXTS} texts"):
        model = load_staged(staging, manifest)
        try:
            return with_calibration(model, manifest)
        finally:
            model.close()


def _with_provenance(manifest: Manifest, started: float) -> Manifest:
    versions = {}
    for package in PROVENANCE_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    build = {
        **manifest.build,
        "precision": "fp32",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.perf_counter() - started, 1),
        "python": platform.python_version(),
        "versions": versions,
    }
    return replace(manifest, build=build)
