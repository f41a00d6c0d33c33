"""A served model: its towers and their preprocessing, loaded, warmed up and leased to requests.

What a request asks of it (embed, rank, classify) is a task pipeline in runtime.tasks."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from runtime.backends import Backend, open_backend, served_graph
from runtime.batching.packing import split_requests
from runtime.batching.stats import TowerStats
from runtime.batching.tower import Collate, Split, Tower
from runtime.classifier import Classifier
from runtime.config import RuntimeConfig
from runtime.errors import InputError, ModelLoadError
from runtime.pairs import PairEncoder, load_pair_encoder
from runtime.preprocessing.fetch import DOWNLOAD_FAILED, ImageFetcher, is_url
from runtime.preprocessing.images import ImageDecodeError, decode, preprocess
from runtime.preprocessing.tokenizer import TextTokenizer, open_tokenizer
from runtime.repository import Entry
from runtime.repository.manifest import ImageSpec, Manifest, TowerSpec
from runtime.sparse import QueryLookup, open_query_lookup
from runtime.text import TextEncoder, collate_packed, collate_rows

log = logging.getLogger(__name__)


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
        self.tower.admit(len(sources))
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

    def warm_up(self) -> None:
        """The largest execution the batcher forms, then one image (the readiness probe), as
        text towers warm up (runtime.text): blank images, through the same preprocessing as
        real ones."""
        height, width = self.spec.size
        blank = preprocess(Image.new("RGB", (width, height)), self.spec)
        self.tower.run_largest(blank)
        self.tower.warm_up([blank])


class Model:
    def __init__(
        self,
        manifest: Manifest,
        text: TextEncoder | None,
        image: ImageEncoder | None,
        classifier: Classifier | None = None,
        pair: PairEncoder | None = None,
        tokens: TextEncoder | None = None,
    ) -> None:
        self.manifest = manifest
        self.text = text
        self.image = image
        self.classifier = classifier
        # Cross-encoders and text classifiers: token ids (of pairs, or of texts) -> logits.
        self.pair = pair
        # Token embeddings (before pooling), for models built with --token-embeddings.
        self.tokens = tokens
        # Inference-free SPLADE: the query side's lookup (runtime.sparse), set by load.
        self.sparse_query: QueryLookup | None = None
        # Set by the registry: the engine directory and which build of it this is.
        self.directory: Path | None = None
        self.identity: tuple[int, int] | None = None
        self._users = 0
        self._retired = False
        self._lease = threading.Lock()

    @property
    def name(self) -> str:
        return self.manifest.name

    @classmethod
    def load(
        cls,
        entry: Entry,
        runtime: RuntimeConfig | None = None,
        fetcher: ImageFetcher | None = None,
        *,
        warm_up: bool = True,
    ) -> Model:
        """Open and warm up every tower of `entry`. `fetcher`: a download pool to share (the
        registry's), else the model gets its own from `runtime.fetch`. `warm_up` False skips
        the warm-up executions (the largest input the budget allows, seconds on a CPU) for a
        caller that runs the model at once on inputs of its own: the builder's checks."""
        manifest, directory = entry.manifest, entry.directory
        runtime = runtime or RuntimeConfig()
        # Before any tower starts: a broken lookup fails the load with nothing to close.
        sparse_query = open_query_lookup(directory, manifest.sparse_query)
        text = image = tokens = None
        if "text" in manifest.towers:
            if manifest.tokenizer is None:
                raise ModelLoadError(f"{directory}: the text tower has no tokenizer in model.json")
            tokenizer = open_tokenizer(TextTokenizer, directory, manifest.tokenizer)
            text = TextEncoder(
                _text_tower(entry, "text", runtime, tokenizer), tokenizer, manifest.prompts
            )
            tokens = None
            if "tokens" in manifest.towers:
                tokens = TextEncoder(
                    _text_tower(entry, "tokens", runtime, tokenizer), tokenizer, manifest.prompts
                )
        if "image" in manifest.towers:
            if manifest.image is None:
                raise ModelLoadError(f"{directory}: the image tower has no image settings")
            pixels = manifest.towers["image"].inputs[0].name
            image = ImageEncoder(
                _tower(entry, "image", runtime, partial(_stack, pixels)),
                manifest.image,
                fetcher or ImageFetcher(runtime.fetch),
                runtime.max_image_pixels,
            )
        classifier = None
        if manifest.classifier is not None:
            try:
                classifier = Classifier(directory, manifest.classifier)
            except (OSError, ValueError) as error:
                raise ModelLoadError(f"cannot load the labels of {directory}: {error}") from error
        pair = None
        if "pair" in manifest.towers:
            pair = load_pair_encoder(entry, partial(_token_tower, entry, "pair", runtime))
        model = cls(manifest, text, image, classifier, pair, tokens)
        model.sparse_query = sparse_query
        model.directory = directory
        if warm_up:
            model.warm_up()
        return model

    def acquire(self) -> None:
        """A request starts using the model."""
        with self._lease:
            self._users += 1

    def release(self) -> None:
        """A request is done with the model; the last one out closes a retired model."""
        with self._lease:
            self._users -= 1
            last = self._retired and self._users == 0
        if last:
            self.close()

    def retire(self) -> None:
        """No new requests get this model; it closes once the requests holding it finish."""
        with self._lease:
            self._retired = True
            idle = self._users == 0
        if idle:
            self.close()

    @property
    def towers(self) -> dict[str, Tower]:
        return {kind: encoder.tower for kind, encoder in self._encoders().items()}

    def warm_up(self) -> None:
        """One execution per tower before the model counts as loaded: a model that cannot
        execute fails its load (and is not ready) instead of failing its first request."""
        for kind, encoder in self._encoders().items():
            try:
                encoder.warm_up()
            except Exception as error:
                self.close()
                raise ModelLoadError(
                    f"{self.name}: the {kind} tower's warm-up execution failed: {error}"
                ) from error

    def not_ready(self, stuck_after_s: float, max_failures: int) -> str | None:
        """Why this model cannot serve now (per tower), or None when every tower can."""
        reasons = [
            f"{kind} tower: {reason}"
            for kind, tower in self.towers.items()
            if (reason := tower.check(stuck_after_s, max_failures)) is not None
        ]
        return "; ".join(reasons) or None

    def _encoders(self) -> dict[str, TextEncoder | ImageEncoder | PairEncoder]:
        encoders = (
            ("text", self.text),
            ("image", self.image),
            ("pair", self.pair),
            ("tokens", self.tokens),
        )
        return {kind: encoder for kind, encoder in encoders if encoder is not None}

    def close(self) -> None:
        """Stop the towers' executors (each then releases its engine) and the decode threads."""
        for encoder in self._encoders().values():
            encoder.tower.close()
        if self.image is not None:
            self.image.decoders.shutdown(wait=False)


def _names(spec: TowerSpec) -> list[str]:
    return [tensor.name for tensor in spec.inputs]


def _stack(name: str, images: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.stack(images)}


def _tower(
    entry: Entry,
    key: str,
    runtime: RuntimeConfig,
    collate: Collate,
    spec: TowerSpec | None = None,
    split_for: Callable[[Backend], Split] | None = None,
) -> Tower:
    """`split_for`: how executions are cut, given the engine that runs them (default: the
    batcher's padded executions)."""
    spec = spec or entry.manifest.towers[key]
    stats = TowerStats(entry.name, f"{key}_encoder")
    backend = _open(entry, spec, runtime)
    decision = getattr(backend, "decision", None)
    if decision is not None:
        stats.probe(decision.figures)
    split = split_for(backend) if split_for is not None else None
    return Tower(spec, backend, stats, collate, runtime.batching, split)


def _text_tower(entry: Entry, key: str, runtime: RuntimeConfig, tokenizer: TextTokenizer) -> Tower:
    """A tower of token rows: `text`, or `tokens` for token embeddings."""
    padded = partial(collate_rows, tokenizer, _names(entry.manifest.towers[key]))
    packed = partial(collate_packed, tokenizer)
    return _token_tower(entry, key, runtime, padded, packed, lambda row: len(row.ids))


def _token_tower(
    entry: Entry,
    key: str,
    runtime: RuntimeConfig,
    padded: Collate,
    packed: Collate,
    tokens_of: Callable[[Any], int],
) -> Tower:
    """A tower of tokens (text, token embeddings, pairs) on the graph it serves: packed rows
    (collated by `packed`; `tokens_of` counts an item's tokens) where it has a packed graph that
    serves here, else padded rows (collated by `padded`)."""
    spec = entry.manifest.towers[key]
    try:
        served = served_graph(spec, runtime, entry.name)
    except Exception as error:
        raise ModelLoadError(f"cannot load {entry.directory / spec.onnx}: {error}") from error
    if served is not spec:
        return _tower(
            entry, key, runtime, packed, served, partial(_packed_split, runtime, spec, tokens_of)
        )
    return _tower(entry, key, runtime, padded)


def _packed_split(
    runtime: RuntimeConfig, spec: TowerSpec, tokens_of: Callable[[Any], int], backend: Backend
) -> Split:
    """Packed executions within --max-batch-tokens real tokens and the tower's max batch of
    texts, or more texts where they are short enough for the engine's `packed_tokens`."""
    short_tokens = min(runtime.batching.max_tokens, backend.packed_tokens or 0)
    return partial(
        split_requests, tokens_of, runtime.batching.max_tokens, spec.max_batch, short_tokens
    )


def _open(entry: Entry, spec: TowerSpec, runtime: RuntimeConfig) -> Backend:
    try:
        return open_backend(entry.directory, spec, runtime, entry.name)
    except Exception as error:
        raise ModelLoadError(f"cannot load {entry.directory / spec.onnx}: {error}") from error
