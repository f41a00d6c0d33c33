"""A served model: its towers, their preprocessing and the shared post-processing."""

from __future__ import annotations

import threading
import time

import numpy as np

from runtime.backends import Backend, open_backend
from runtime.manifest import Manifest, TowerSpec
from runtime.postprocess import finish_embeddings
from runtime.repository import Entry
from runtime.stats import BATCH_STATS, RequestTimer, TowerStats
from runtime.tokenizer import TextTokenizer


class InputError(ValueError):
    """The request asks something of the model that it cannot do; the message says what."""


class ModelLoadError(RuntimeError):
    """An engine directory that cannot be loaded; the message names the file and the cause."""


class TextTower:
    """Tokenizer + backend. Executions are serialised per tower: the backend already uses
    every core it was given, so running two batches at once would only oversubscribe them."""

    def __init__(
        self, spec: TowerSpec, tokenizer: TextTokenizer, backend: Backend, stats: TowerStats
    ):
        self.spec = spec
        self.tokenizer = tokenizer
        self.backend = backend
        self.stats = stats
        self._executor = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed texts in batches of at most the profile's max batch.

        Texts are grouped by token count so each batch pads only to its own longest member.
        """
        timer = RequestTimer()
        try:
            embeddings = self._embed(texts, timer)
        except BaseException:
            self.stats.request(timer, succeeded=False)
            raise
        self.stats.request(timer, succeeded=True)
        return embeddings

    def _embed(self, texts: list[str], timer: RequestTimer) -> np.ndarray:
        ids = self.tokenizer.token_ids(texts)
        self.stats.preprocess("tokenize", time.perf_counter_ns() - timer.arrival)
        order = sorted(range(len(ids)), key=lambda index: len(ids[index]))
        names = [spec.name for spec in self.spec.inputs]
        embeddings = np.empty((len(ids), self.spec.dim), dtype=np.float32)
        for start in range(0, len(order), self.spec.max_batch):
            chunk = order[start : start + self.spec.max_batch]
            waiting = time.perf_counter_ns()
            with self._executor:
                began = time.perf_counter_ns()
                batch = self.tokenizer.batch([ids[i] for i in chunk], names)
                prepared = time.perf_counter_ns()
                output = self.backend.run(batch)
                executed = time.perf_counter_ns()
                embeddings[chunk] = output
                finished = time.perf_counter_ns()
            durations = (prepared - began, executed - prepared, finished - executed)
            self.stats.execution(len(chunk), *durations)
            timer.add("queue", began - waiting)
            for stat, ns in zip(BATCH_STATS, durations, strict=True):
                timer.add(stat, ns)
        return embeddings


class Model:
    def __init__(self, manifest: Manifest, text: TextTower | None) -> None:
        self.manifest = manifest
        self.text = text

    @property
    def name(self) -> str:
        return self.manifest.name

    @classmethod
    def load(cls, entry: Entry, backend: str = "auto", threads: int = 0) -> Model:
        manifest, directory = entry.manifest, entry.directory
        text = None
        spec = manifest.towers.get("text")
        if spec is not None:
            if manifest.tokenizer is None:
                raise ModelLoadError(f"{directory}: the text tower has no tokenizer in model.json")
            try:
                tokenizer = TextTokenizer(directory, manifest.tokenizer)
            except Exception as error:
                raise ModelLoadError(
                    f"cannot load {directory / manifest.tokenizer.file}: {error}"
                ) from error
            stats = TowerStats(manifest.name, "text_encoder")
            text = TextTower(spec, tokenizer, _open(entry, spec, backend, threads), stats)
        return cls(manifest, text)

    def embed_text(self, texts: list[str], normalize: bool, n_dims: int | None) -> np.ndarray:
        if self.text is None:
            raise InputError(f"model {self.name!r} has no text tower; it cannot embed text")
        _check_n_dims(n_dims, self.text.spec.dim)
        return finish_embeddings(self.text.embed(texts), normalize, n_dims)


def _open(entry: Entry, spec: TowerSpec, backend: str, threads: int) -> Backend:
    try:
        return open_backend(entry.directory, spec, backend, threads)
    except Exception as error:
        raise ModelLoadError(f"cannot load {entry.directory / spec.onnx}: {error}") from error


def _check_n_dims(n_dims: int | None, dim: int) -> None:
    if n_dims is not None and not 1 <= n_dims <= dim:
        raise InputError(f"nDims must be between 1 and {dim} (this model's dimension), or null")
