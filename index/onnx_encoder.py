"""`onnx:` encoder backend: onnxruntime + the fast tokenizer + mean pooling, no torch.

`OnnxEncoder(path)` where `path` is either
  * an `.onnx` file (fp32 or int8, e.g. `var/models/e5/onnx/model_int8.onnx`): the tokenizer
    (`tokenizer.json`) is looked up in the file's directory, then its parent (the model dir); or
  * a model directory: its `onnx/model.onnx` (fp32), else a `model.onnx` at its root. A directory
    never silently picks the int8 file: quantisation changes the vectors, so name the file.

The graph must take `input_ids` and `attention_mask` (and optionally `token_type_ids`, fed zeros)
and return the token embeddings as its first output ([batch, sequence, hidden]); pooling is the mean
over all attended tokens (prefix and `<s>`/`</s>` included, as sentence-transformers' mean pooling
with include_prompt=True), then L2 normalisation. Texts are truncated at `max_seq_length` tokens
(specials included; capped at the model's `max_position_embeddings` when its config.json is
there) and padded to the longest text of each batch (texts are sorted by length first).
Inputs are expected to be already sanitised (index.text.sanitize). onnxruntime sessions are
thread-safe, and so is this class.

Batch size: 32, for float graphs and for the per-token int8 file `faqbot model export-onnx --int8`
writes (index.onnx_int8): each token row is quantised with its own scale, so a text's vector is the
same alone or in any batch (max |delta| 0, docs/models.md). A graph quantised by onnxruntime's
`quantize_dynamic` (it has `DynamicQuantizeLinear` nodes) takes one activation scale per batch, so
a text's vector would depend on the texts batched with it (cosine 0.994 at worst between alone and in
a batch of 32); such graphs run one text at a time by default, which keeps "same text, same vector"
(a verbatim FAQ question matches itself at cosine 1.0). Pass `batch_size` to choose otherwise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

BATCH_SIZE = 32


_DYNAMIC_QUANT_OP = b"DynamicQuantizeLinear"


def _scan(path: Path) -> tuple[str, bool]:
    """(sha256 prefix of 16 hex, whether the graph quantises activations at run time), in one read."""
    digest = hashlib.sha256()
    dynamic, tail = False, b""
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            if not dynamic:
                dynamic = _DYNAMIC_QUANT_OP in tail + chunk
                tail = chunk[-len(_DYNAMIC_QUANT_OP) :]
    return digest.hexdigest()[:16], dynamic


def _max_positions(model_dir: Path) -> int | None:
    """max_position_embeddings from the model's config.json, if there is one."""
    import json

    try:
        value = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int) and value > 2 else None


def resolve_onnx_path(path: str | Path) -> tuple[Path, Path]:
    """(onnx file, tokenizer.json) for an .onnx file or a model directory; FileNotFoundError if absent."""
    p = Path(path)
    if p.is_dir():
        for cand in (p / "onnx" / "model.onnx", p / "model.onnx"):
            if cand.is_file():
                onnx_file = cand
                break
        else:
            raise FileNotFoundError(f"no onnx/model.onnx or model.onnx in {p} (run `faqbot model export-onnx`)")
    elif p.is_file():
        onnx_file = p
    else:
        raise FileNotFoundError(f"ONNX model not found: {p}")
    for d in (onnx_file.parent, onnx_file.parent.parent):
        if (d / "tokenizer.json").is_file():
            return onnx_file, d / "tokenizer.json"
    raise FileNotFoundError(f"no tokenizer.json next to {onnx_file} or in its parent directory")


class OnnxEncoder:
    """Sentence embeddings from an ONNX feature-extraction graph (see module doc)."""

    def __init__(
        self,
        path: str | Path,
        *,
        query_prefix: str = "query: ",
        passage_prefix: str = "query: ",
        max_seq_length: int = 512,
        threads: int = 1,
        batch_size: int | None = None,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.path, tok_path = resolve_onnx_path(path)
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.max_seq_length = int(max_seq_length)
        if self.max_seq_length < 2:
            raise ValueError("max_seq_length must be at least 2")

        model_limit = _max_positions(tok_path.parent)
        if model_limit is not None and self.max_seq_length > model_limit:
            self.max_seq_length = model_limit  # more positions than the model has would fail in the graph
        self._tokenizer = Tokenizer.from_file(str(tok_path))
        self._tokenizer.no_padding()
        # truncation keeps the head of the text and still ends with </s> (the post-processor adds it)
        self._tokenizer.enable_truncation(max_length=self.max_seq_length)
        pad_id = self._tokenizer.token_to_id("<pad>")
        self._pad_id = int(pad_id) if pad_id is not None else 0

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self._inputs
        if missing:
            raise ValueError(f"{self.path} lacks inputs {sorted(missing)}")
        self._output = self._session.get_outputs()[0].name
        shape = self._session.get_outputs()[0].shape
        dim = shape[-1] if shape and isinstance(shape[-1], int) else None
        if dim is None:
            dim = int(self._run(["x"]).shape[1])
        self._dim = int(dim)
        digest, dynamic_quant = _scan(self.path)
        # the prefixes and the length change the vectors as much as the weights do (as for sentence-transformers)
        self.parallel_calls = True  # onnxruntime sessions run concurrent calls in parallel (no lock here)
        self._fingerprint = f"onnx:{digest}:q={query_prefix!r}:p={passage_prefix!r}:len={self.max_seq_length}"
        self.dynamic_quantized = dynamic_quant
        # quantize_dynamic graphs take one activation scale per batch: encode them one text at a time
        # so a text's vector never depends on its batch neighbours (per-token int8 files batch; module doc)
        self.batch_size = max(1, int(batch_size)) if batch_size else (1 if dynamic_quant else BATCH_SIZE)
        self._name = f"onnx:{self.path}"

    # -- interface ------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def name(self) -> str:
        return self._name

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.query_prefix)

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.passage_prefix)

    # -- work -----------------------------------------------------------------------------------

    def _encode(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("pass a list of strings, not a string")
        items = [prefix + t for t in texts]
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        # sort by length so each padded batch wastes little; restore the order at the end
        order = sorted(range(len(items)), key=lambda i: len(items[i]))
        out = np.empty((len(items), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = self._run([items[i] for i in idx])
        return out

    def _run(self, batch: list[str]) -> np.ndarray:
        # one by one: encode_batch would start tokenizers' own thread pool next to onnxruntime's
        encs = [self._tokenizer.encode(text) for text in batch]
        n, longest = len(encs), max(len(e.ids) for e in encs)
        ids = np.full((n, longest), self._pad_id, dtype=np.int64)
        mask = np.zeros((n, longest), dtype=np.int64)
        for row, enc in enumerate(encs):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run([self._output], feed)[0].astype(np.float32, copy=False)
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
