"""`auto` on the CPU: the backend and precision a tower runs fastest on, measured on this host.

Each candidate (ONNX Runtime f32, OpenVINO f32, OpenVINO bf16 where verified; int8 where the
model has a verified variant, measured for show but never chosen) is opened with the settings
the server really uses and run on the shapes the batcher forms: one short row, and a full batch
at a typical length. Rounds are interleaved (every candidate once per shape per round, the order
rotating), so a noisy neighbour slows all of them alike; the figure per shape is the median.

Where one candidate is clearly fastest on short executions and another on full batches (on a
CPU with BF16, ONNX Runtime f32 often answers one text sooner while OpenVINO bf16 runs a full
batch 2-3x faster), the tower keeps both and runs each execution on the one that is faster at
its size: the crossover comes from a straight line (fixed cost + cost per token) fitted through
each candidate's two figures.

The choice and its figures are kept in a small JSON file per tower and key, the key being
everything that could change the answer (CPU model and flags, backend versions, the model
files' SHA-256, threads, the candidates): a restart with the same key probes nothing. A file
lock makes concurrent workers probe once; the others wait for it and read its result.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import platform
import stat
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

import numpy as np

from runtime.backends.base import Backend
from runtime.backends.split import SplitBackend
from runtime.repository.digests import sha256_file
from runtime.repository.manifest import TowerSpec, write_atomically

log = logging.getLogger(__name__)

# Rounds of the probe: at least MIN, then more while the probe has run under BUDGET_S.
MIN_PROBE_ROUNDS = 3
MAX_PROBE_ROUNDS = 7
PROBE_BUDGET_S = 3.0
# How long a worker waits for another worker's probe of the same tower before probing itself
# (well within gunicorn's --timeout, which a worker still loading its models must not pass).
LOCK_WAIT_S = 60.0
# Precisions that change results: measured and shown, never chosen by `auto`.
LOSSY = ("int8",)
# Raised when the way a candidate is opened changes what it measures (3: OpenVINO keeps a few
# kernels per shape; 4: and runs packed graphs' attention unfused; 5: keeps kernels for a few
# recent shapes), so choices measured the old way are measured again.
KEY_VERSION = 5
# Each of two candidates must beat the other by this much on its own shape for the tower to
# keep both (a second engine costs its memory; a small gain is not worth it).
SPLIT_MARGIN = 1.2
# A state file is a few hundred bytes; anything much larger is not one.
MAX_STATE_BYTES = 1 << 20


@dataclass(frozen=True)
class Candidate:
    backend: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.precision}"

    @classmethod
    def parse(cls, label: str) -> Candidate:
        backend, _, precision = label.partition("/")
        return cls(backend, precision)


@dataclass(frozen=True)
class Split:
    """Executions of more than `above` tokens (rows x row length; images: rows) run on
    `large`; the others on the decision's `choice`."""

    large: Candidate
    above: int

    def to_json(self) -> dict:
        return {"large": self.large.label, "above": self.above}


@dataclass(frozen=True)
class Decision:
    """What `auto` runs a tower on, the figures it chose by, and whether they were measured now
    or read from the state file."""

    choice: Candidate
    # candidate label -> shape label ("1x16") -> median milliseconds
    figures: dict[str, dict[str, float]]
    source: str  # "measured" or "cached"
    split: Split | None = None

    @property
    def label(self) -> str:
        """The choice as `ingrain list` and the logs show it."""
        if self.split is None:
            return self.choice.label
        return (
            f"{self.choice.label} up to {self.split.above} tokens, {self.split.large.label} above"
        )

    def summary(self) -> str:
        parts = [
            f"{label} " + " ".join(f"{shape}: {ms:.2f} ms" for shape, ms in shapes.items())
            for label, shapes in self.figures.items()
        ]
        return f"{self.label} ({self.source}; {'; '.join(parts)})"

    def to_json(self) -> dict:
        split = {"split": self.split.to_json()} if self.split is not None else {}
        return {
            "choice": self.choice.label,
            "source": self.source,
            "figures": self.figures,
            **split,
        }


def choose(figures: dict[str, dict[str, float]]) -> Candidate:
    """The fastest lossless candidate: lowest geometric mean over the probe shapes of its median
    milliseconds (each shape counts alike, however long it runs). Ties go to the first listed."""
    eligible = {
        label: shapes
        for label, shapes in figures.items()
        if Candidate.parse(label).precision not in LOSSY and shapes
    }
    if not eligible:
        raise ValueError("no lossless candidate was measured")

    def score(label: str) -> float:
        values = list(eligible[label].values())
        return math.exp(sum(math.log(max(value, 1e-9)) for value in values) / len(values))

    return Candidate.parse(min(eligible, key=score))


def plan(figures: dict[str, dict[str, float]]) -> tuple[Candidate, Split | None]:
    """The choice, and a split where the fastest lossless candidate on the smallest probe shape
    is not the fastest on the largest and each beats the other by SPLIT_MARGIN on its own
    shape. The threshold is where the two candidates' cost lines (fixed + per token, through
    their two figures) cross."""
    choice = choose(figures)
    lossless = {
        label: shapes
        for label, shapes in figures.items()
        if Candidate.parse(label).precision not in LOSSY and len(shapes) >= 2
    }
    if len(lossless) < 2:
        return choice, None
    shapes = sorted(next(iter(lossless.values())), key=shape_tokens)
    small, large = shapes[0], shapes[-1]
    fast_small = min(lossless, key=lambda label: lossless[label][small])
    fast_large = min(lossless, key=lambda label: lossless[label][large])
    if fast_small == fast_large:
        return choice, None
    a, b = lossless[fast_small], lossless[fast_large]
    if a[large] < b[large] * SPLIT_MARGIN or b[small] < a[small] * SPLIT_MARGIN:
        return choice, None
    tokens_small, tokens_large = shape_tokens(small), shape_tokens(large)

    def line(figures: dict[str, float]) -> tuple[float, float]:
        per_token = (figures[large] - figures[small]) / (tokens_large - tokens_small)
        return figures[small] - per_token * tokens_small, per_token

    (fixed_a, slope_a), (fixed_b, slope_b) = line(a), line(b)
    crossing = (fixed_b - fixed_a) / (slope_a - slope_b)
    above = int(min(max(crossing, tokens_small), tokens_large - 1))
    return Candidate.parse(fast_small), Split(Candidate.parse(fast_large), above)


def shape_tokens(label: str) -> int:
    """Tokens an execution of the shape holds ("32x64": 2048; an image batch "8": 8)."""
    rows, _, tokens = label.partition("x")
    return int(rows) * (int(tokens) if tokens else 1)


def probe_shapes(tower: TowerSpec) -> list[tuple[int, int | None]]:
    """(rows, tokens) the batcher forms: one short row, and a full batch at a typical length
    (for image towers: one image and a batch of eight)."""
    if any("sequence" in tensor.shape for tensor in tower.inputs):
        longest = tower.max_seq_len or 512
        return [(1, min(16, longest)), (min(tower.max_batch, 32), min(64, longest))]
    return [(1, None), (min(tower.max_batch, 8), None)]


def shape_label(rows: int, tokens: int | None) -> str:
    return f"{rows}x{tokens}" if tokens is not None else f"{rows}"


def probe_inputs(tower: TowerSpec, rows: int, tokens: int | None) -> dict[str, np.ndarray]:
    """Inputs of the shape: small token ids (valid in any vocabulary), masks of ones, one
    text per row for packed graphs (a text never spans rows), zeros elsewhere (images)."""
    inputs = {}
    for tensor in tower.inputs:
        shape = [
            rows if d == "batch" else tokens if d == "sequence" else int(d) for d in tensor.shape
        ]
        dtype = np.dtype(tensor.dtype)
        if tensor.name == "input_ids":
            array = (np.arange(int(np.prod(shape))) % 90 + 5).reshape(shape).astype(dtype)
        elif tensor.name == "segment_ids":
            array = np.broadcast_to(np.arange(1, rows + 1, dtype=dtype)[:, None], shape).copy()
        elif "mask" in tensor.name:
            array = np.ones(shape, dtype)
        else:
            array = np.zeros(shape, dtype)
        inputs[tensor.name] = array
    return inputs


def measure(
    backends: dict[str, Backend],
    inputs: dict[str, dict[str, np.ndarray]],
    min_rounds: int = MIN_PROBE_ROUNDS,
    max_rounds: int = MAX_PROBE_ROUNDS,
    budget_s: float = PROBE_BUDGET_S,
) -> dict[str, dict[str, float]]:
    """Median milliseconds per candidate and shape, over interleaved rounds after one warm-up
    execution of each: `min_rounds`, then more up to `max_rounds` while under `budget_s`."""
    labels = list(backends)
    for label in labels:
        for feed in inputs.values():
            backends[label].run(feed)
    samples: dict[str, dict[str, list[float]]] = {
        label: {shape: [] for shape in inputs} for label in labels
    }
    started = time.monotonic()
    for round_index in range(max_rounds):
        if round_index >= min_rounds and time.monotonic() - started > budget_s:
            break
        shift = round_index % max(len(labels), 1)
        for shape, feed in inputs.items():
            for label in labels[shift:] + labels[:shift]:
                begun = time.perf_counter_ns()
                backends[label].run(feed)
                samples[label][shape].append((time.perf_counter_ns() - begun) / 1e6)
    return {
        label: {shape: round(statistics.median(times), 3) for shape, times in shapes.items()}
        for label, shapes in samples.items()
    }


@cache
def cpu_identity() -> dict[str, str]:
    """The CPU's model name and a digest of its instruction-set flags."""
    fields = {"model name": "", "flags": ""}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                key, _, value = line.partition(":")
                if key.strip() in fields and not fields[key.strip()]:
                    fields[key.strip()] = value.strip()
    except OSError:
        pass
    digest = hashlib.sha256(fields["flags"].encode()).hexdigest()[:16]
    return {"cpu": fields["model name"] or platform.processor(), "flags": digest}


def cpu_class() -> list[str]:
    """The instruction-set extensions that decide CPU inference speed, as /proc/cpuinfo names
    them (empty where it cannot be read)."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            flags = next((line for line in stream if line.startswith("flags")), "")
    except OSError:
        return []
    present = set(flags.partition(":")[2].split())
    return [flag for flag in wanted if flag in present]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


_digests: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a model file, remembered per (path, size, mtime) in this process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        _digests[key] = sha256_file(path)
    return _digests[key]


def probe_key(
    tower: TowerSpec, files: list[Path], candidates: list[Candidate], threads: int
) -> dict:
    """Everything that could change which candidate is fastest."""
    return {
        "version": KEY_VERSION,
        **cpu_identity(),
        "onnxruntime": _version("onnxruntime"),
        "openvino": _version("openvino"),
        "files": {path.name: file_digest(path) for path in files},
        "threads": threads or os.cpu_count(),  # 0: every core
        "candidates": [candidate.label for candidate in candidates],
        "shapes": [shape_label(*shape) for shape in probe_shapes(tower)],
    }


def state_file(state_dir: Path, tower: TowerSpec, key: dict) -> Path:
    """One file per tower and key: servers with different settings sharing a state directory
    (or engine copies sharing one) each keep their own choice instead of overwriting."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return state_dir / f"backend-choice-{Path(tower.onnx).stem}-{digest}.json"


def read_cached(path: Path, key: dict) -> Decision | None:
    """The decision stored at `path` if it was made under `key` and is one `auto` could have
    made (a lossless candidate of the key, figures in milliseconds); anything else, including
    a file that is not a small regular one (a pipe, a link, a device), is measured again."""
    try:
        stored = json.loads(_read_small(path))
        if stored.get("key") != key:
            return None
        choice = Candidate.parse(stored["choice"])
        figures = stored["figures"]
        if stored["choice"] not in key["candidates"] or choice.precision in LOSSY:
            return None
        if not all(
            isinstance(shapes, dict) and all(_is_milliseconds(ms) for ms in shapes.values())
            for shapes in figures.values()
        ):
            return None
        split = None
        if "split" in stored:
            large, above = stored["split"]["large"], stored["split"]["above"]
            if large not in key["candidates"] or Candidate.parse(large).precision in LOSSY:
                return None
            if not isinstance(above, int) or isinstance(above, bool) or above < 0:
                return None
            split = Split(Candidate.parse(large), above)
        return Decision(choice, figures, "cached", split)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _is_milliseconds(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _open_regular(path: Path, flags: int) -> int:
    """A descriptor of `path` opened without blocking or following a link (a pipe with no
    writer, a link to a device or elsewhere); OSError unless it is a regular file."""
    handle = os.open(path, flags | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    if not stat.S_ISREG(os.fstat(handle).st_mode):
        os.close(handle)
        raise OSError(f"{path} is not a regular file")
    return handle


def _read_small(path: Path) -> bytes:
    """The file's bytes; ValueError past MAX_STATE_BYTES (a state file is a few hundred)."""
    with os.fdopen(_open_regular(path, os.O_RDONLY), "rb") as stream:
        data = stream.read(MAX_STATE_BYTES + 1)
    if len(data) > MAX_STATE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_STATE_BYTES} bytes")
    return data


@contextmanager
def _exclusive(path: Path) -> Iterator[bool]:
    """Hold an exclusive lock on `path`.lock while the block runs (False: none could be had
    within LOCK_WAIT_S, or the directory is not writable; the block runs anyway)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        handle = os.fdopen(_open_regular(path.with_suffix(".lock"), flags), "a")
    except OSError as error:
        log.warning("%s: cannot keep the backend choice (%s); probing without a cache", path, error)
        yield False
        return
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    log.warning("%s: another worker's probe is still running; probing too", path)
                    yield False
                    return
                time.sleep(0.05)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def decide(
    state_dir: Path | None,
    tower: TowerSpec,
    files: list[Path],
    candidates: list[Candidate],
    threads: int,
    opener: Callable[[Candidate], Backend],
) -> tuple[Decision, Backend]:
    """The cached decision for this key, else one measured now and stored; and the chosen
    candidate's backend, opened (the probe's own when it ran, so it is not compiled twice)."""
    shapes = probe_shapes(tower)
    key = probe_key(tower, files, candidates, threads)
    path = state_file(state_dir, tower, key) if state_dir is not None else None
    if path is None:
        decision, backends = _probe(tower, candidates, shapes, opener)
        return decision, _keep(decision, backends, opener)
    cached = read_cached(path, key)
    if cached is not None:
        return cached, _open_decision(cached, opener)
    with _exclusive(path) as locked:
        cached = read_cached(path, key)  # another worker may have probed while we waited
        if cached is not None:
            return cached, _open_decision(cached, opener)
        decision, backends = _probe(tower, candidates, shapes, opener)
        if locked:
            stored = {"key": key, **decision.to_json(), "measured": time.time()}
            try:
                write_atomically(path, json.dumps(stored, indent=2) + "\n")
            except OSError as error:
                log.warning("%s: cannot keep the backend choice: %s", path, error)
    return decision, _keep(decision, backends, opener)


def _probe(tower, candidates, shapes, opener) -> tuple[Decision, dict[str, Backend]]:
    backends: dict[str, Backend] = {}
    for candidate in candidates:
        try:
            backends[candidate.label] = opener(candidate)
        except Exception as error:  # a candidate that cannot open here is not a choice
            log.warning(
                "%s: %s cannot run here (%s); not a candidate", tower.onnx, candidate.label, error
            )
    inputs = {shape_label(*shape): probe_inputs(tower, *shape) for shape in shapes}
    try:
        figures = measure(backends, inputs)
    except Exception:
        _close(backends.values())
        raise
    choice, split = plan(figures)
    return Decision(choice, figures, "measured", split), backends


def _keep(decision: Decision, backends: dict[str, Backend], opener) -> Backend:
    """The decision's backend(s), taken from the probe's where it opened them."""
    kept = [decision.choice] + ([decision.split.large] if decision.split else [])
    opened = {c.label: backends.pop(c.label, None) or opener(c) for c in kept}
    _close(backends.values())
    return _combine(decision, opened)


def _open_decision(decision: Decision, opener) -> Backend:
    return _keep(decision, {}, opener)


def _combine(decision: Decision, opened: dict[str, Backend]) -> Backend:
    small = opened[decision.choice.label]
    if decision.split is None:
        return small
    return SplitBackend(small, opened[decision.split.large.label], decision.split.above)


def _close(backends) -> None:
    for backend in backends:
        backend.close()
