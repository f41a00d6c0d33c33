"""A served model: its towers, their preprocessing and the shared post-processing."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from runtime.backends import Backend, open_backend
from runtime.batching import BatchingConfig
from runtime.classifier import Classifier
from runtime.fetch import DOWNLOAD_FAILED, FetchLimits, ImageFetcher, is_url
from runtime.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode, preprocess
from runtime.manifest import ImageSpec, Manifest, TowerSpec
from runtime.postprocess import finish_embeddings
from runtime.repository import Entry
from runtime.stats import TowerStats
from runtime.tokenizer import TextTokenizer
from runtime.tower import Collate, Tower

log = logging.getLogger(__name__)


class InputError(ValueError):
    """The request asks something of the model that it cannot do; the message says what."""


class ModelLoadError(RuntimeError):
    """An engine directory that cannot be loaded; the message names the file and the cause."""


class TextEncoder:
    def __init__(self, tower: Tower, tokenizer: TextTokenizer) -> None:
        self.tower = tower
        self.tokenizer = tokenizer

    def embed(self, texts: list[str]) -> np.ndarray:
        started = time.perf_counter_ns()
        ids = self.tokenizer.token_ids(texts)
        self.tower.stats.preprocess("tokenize", time.perf_counter_ns() - started)
        return self.tower.infer(ids, lengths=[len(row) for row in ids])


class ImageEncoder:
    def __init__(self, tower: Tower, spec: ImageSpec, fetcher: ImageFetcher, max_pixels: int):
        self.tower = tower
        self.spec = spec
        self.fetcher = fetcher
        self.max_pixels = max_pixels
        self.decoders = ThreadPoolExecutor(4, thread_name_prefix="image-decode")

    def load(self, sources: list[str], headers: dict[str, str]) -> np.ndarray:
        """Fetch, decode and preprocess every image (in parallel) into one uint8 NCHW array.

        The first image that fails raises an InputError naming its index and the reason.
        """
        started = time.perf_counter_ns()
        fetched = self.fetcher.fetch_all(sources, headers)
        decoding = time.perf_counter_ns()
        self.tower.stats.preprocess("fetch", decoding - started)
        for index, result in enumerate(fetched):
            if isinstance(result, Exception):
                raise InputError(f"image[{index}]: {result}")
        pixels = list(self.decoders.map(self._prepare, fetched))
        self.tower.stats.preprocess("decode", time.perf_counter_ns() - decoding)
        for index, result in enumerate(pixels):
            if isinstance(result, ImageDecodeError):
                # A downloaded image fails like a failed download: no oracle for what a URL holds.
                if is_url(sources[index]):
                    log.warning("image %.200r is not decodable: %s", sources[index], result)
                    raise InputError(f"image[{index}]: {DOWNLOAD_FAILED}")
                raise InputError(f"image[{index}]: {result}")
        return np.stack(pixels)

    def _prepare(self, data: bytes) -> np.ndarray | ImageDecodeError:
        try:
            return preprocess(decode(data, self.max_pixels), self.spec)
        except ImageDecodeError as error:
            return error

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        return self.tower.infer(list(pixels))


class Model:
    def __init__(
        self,
        manifest: Manifest,
        text: TextEncoder | None,
        image: ImageEncoder | None,
        classifier: Classifier | None = None,
    ) -> None:
        self.manifest = manifest
        self.text = text
        self.image = image
        self.classifier = classifier

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def modalities(self) -> str:
        kinds = [kind for kind, encoder in (("text", self.text), ("images", self.image)) if encoder]
        return " and ".join(kinds)

    @property
    def embeds_images(self) -> bool:
        return self.image is not None and self.manifest.task == "embedding"

    @classmethod
    def load(
        cls,
        entry: Entry,
        backend: str = "auto",
        threads: int = 0,
        fetcher: ImageFetcher | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        batching: BatchingConfig | None = None,
    ) -> Model:
        manifest, directory = entry.manifest, entry.directory
        text = image = None
        if "text" in manifest.towers:
            if manifest.tokenizer is None:
                raise ModelLoadError(f"{directory}: the text tower has no tokenizer in model.json")
            try:
                tokenizer = TextTokenizer(directory, manifest.tokenizer)
            except Exception as error:
                raise ModelLoadError(
                    f"cannot load {directory / manifest.tokenizer.file}: {error}"
                ) from error
            names = [tensor.name for tensor in manifest.towers["text"].inputs]
            collate = partial(tokenizer.batch, names=names)
            text = TextEncoder(
                _tower(entry, "text", backend, threads, batching, collate), tokenizer
            )
        if "image" in manifest.towers:
            if manifest.image is None:
                raise ModelLoadError(f"{directory}: the image tower has no image settings")
            pixels = manifest.towers["image"].inputs[0].name
            image = ImageEncoder(
                _tower(entry, "image", backend, threads, batching, partial(_stack, pixels)),
                manifest.image,
                fetcher or ImageFetcher(FetchLimits()),
                max_pixels,
            )
        classifier = None
        if manifest.classifier is not None:
            try:
                classifier = Classifier(directory, manifest.classifier)
            except (OSError, ValueError) as error:
                raise ModelLoadError(f"cannot load the labels of {directory}: {error}") from error
        return cls(manifest, text, image, classifier)

    def embed_text(self, texts: list[str], normalize: bool, n_dims: int | None) -> np.ndarray:
        self.validate(texts=True, images=False, n_dims=n_dims)
        assert self.text is not None
        return finish_embeddings(self.text.embed(texts), normalize, n_dims)

    def load_images(self, sources: list[str], headers: dict[str, str]) -> np.ndarray:
        return self._require(self.image, "embed images").load(sources, headers)

    def embed_images(self, pixels: np.ndarray, normalize: bool, n_dims: int | None) -> np.ndarray:
        self.validate(texts=False, images=True, n_dims=n_dims)
        assert self.image is not None
        return finish_embeddings(self.image.embed(pixels), normalize, n_dims)

    def validate(self, texts: bool, images: bool, n_dims: int | None) -> None:
        """Refuse, before any work, what this model cannot do for a request."""
        if texts:
            _check_n_dims(n_dims, self._require(self.text, "embed text").tower.spec.dim)
        if images:
            if self.image is not None and not self.embeds_images:
                raise InputError(
                    f"model {self.name!r} is an image classifier, not an embedding model; "
                    "use /classify_image"
                )
            _check_n_dims(n_dims, self._require(self.image, "embed images").tower.spec.dim)

    def validate_classification(self) -> None:
        if self.classifier is None:
            raise InputError(
                f"model {self.name!r} has no class labels; use a timm classifier, or build a CLIP "
                "model for zero-shot classification with: ingrain-build SOURCE --labels FILE"
            )
        self._require(self.image, "classify images")

    def classify(self, pixels: np.ndarray) -> np.ndarray:
        self.validate_classification()
        assert self.image is not None and self.classifier is not None
        return self.classifier.probabilities(self.image.embed(pixels))

    def close(self) -> None:
        """Stop the towers' executors (each then releases its engine) and the decode threads."""
        for encoder in (self.text, self.image):
            if encoder is not None:
                encoder.tower.close()
        if self.image is not None:
            self.image.decoders.shutdown(wait=False)

    def _require(self, encoder, action: str):
        if encoder is None:
            raise InputError(
                f"model {self.name!r} cannot {action}: it takes {self.modalities} only"
            )
        return encoder


def _stack(name: str, images: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.stack(images)}


def _tower(
    entry: Entry,
    key: str,
    backend: str,
    threads: int,
    batching: BatchingConfig | None,
    collate: Collate,
) -> Tower:
    spec = entry.manifest.towers[key]
    stats = TowerStats(entry.name, f"{key}_encoder")
    return Tower(spec, _open(entry.directory, spec, backend, threads), stats, collate, batching)


def _open(directory: Path, spec: TowerSpec, backend: str, threads: int) -> Backend:
    try:
        return open_backend(directory, spec, backend, threads)
    except Exception as error:
        raise ModelLoadError(f"cannot load {directory / spec.onnx}: {error}") from error


def _check_n_dims(n_dims: int | None, dim: int) -> None:
    if n_dims is not None and not 1 <= n_dims <= dim:
        raise InputError(f"nDims must be between 1 and {dim} (this model's dimension), or null")
