"""How the index part scales with the KB (docs/performance.md, "Scale"): synthetic KBs of N FAQs.

Encoding 300k texts with the int8 encoder (~200 texts/s on one core) would take ~25 min per size,
so only the index is built at full size here: texts are LCQMC dev sentences recombined (two halves
of different sentences: real wording for the character index), and vectors are the real vectors of
an already built index (e.g. the 3,000-FAQ LCQMC KB's) replicated with Gaussian noise and
re-normalised. Measured per size, in a child process each (its peak RSS is the index's):
FaqIndex construction (the character index included), publishing it, `rank` per query (real
encoded queries: LCQMC bench questions), and an HNSW / IVF index's search time and recall@1 against
the flat index.

    .venv/bin/python scripts/scale_bench.py DATA_DIR_WITH_AN_INDEX QUERIES.jsonl LCQMC_DEV.tsv 3000 30000 300000
"""

from __future__ import annotations

import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from faq import FAQ  # noqa: E402
from index.faq_index import FaqIndex, load_index, publish_index  # noqa: E402


def synthetic_texts(dev_tsv: Path, n: int, seed: int = 0) -> list[str]:
    """n distinct questions made of two halves of different LCQMC dev sentences."""
    sentences = sorted({s for line in dev_tsv.read_text(encoding="utf-8").splitlines()
                        for s in line.split("\t")[:2] if len(s) >= 4})
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        a, b = rng.choice(sentences), rng.choice(sentences)
        out[a[: len(a) // 2] + b[len(b) // 2:]] = None
    return list(out)


def synthetic_index(base: FaqIndex, texts: list[str], seed: int = 0) -> FaqIndex:
    """An index of one FAQ per text, vectors = the base index's rows replicated with noise (sigma 0.02/dim)."""
    rng = np.random.default_rng(seed)
    source = base.vectors.reconstruct_n(0, base.vectors.ntotal)
    picks = rng.integers(0, len(source), size=len(texts))
    vectors = source[picks] + rng.normal(0, 0.02, size=(len(texts), source.shape[1])).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    faqs = [FAQ(id=f"s{i}", question=t, answer=f"ANSWER s{i}") for i, t in enumerate(texts)]
    flat = faiss.IndexFlatIP(source.shape[1])
    flat.add(vectors)
    answers = base.answers[picks % len(base.answers)]
    from dataclasses import replace

    meta = replace(base.meta, n_faqs=len(faqs), n_vectors=len(texts))
    started = time.perf_counter()
    index = FaqIndex(meta, faqs, list(range(len(texts))), texts, flat, answers)
    _ = index.lexical
    index.build_index_seconds = time.perf_counter() - started  # type: ignore[attr-defined]
    return index


def time_rank(index: FaqIndex, vectors: np.ndarray, texts: list[str]) -> float:
    """rank p50 ms per query with FAISS on 1 thread, as on the server's encoder worker (bot.batcher)."""
    faiss.omp_set_num_threads(1)
    times = []
    for i, text in enumerate(texts):
        started = time.perf_counter()
        index.rank(vectors[i:i + 1], [text])
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def approximate(flat: faiss.Index, queries: np.ndarray, k: int = 256) -> dict[str, object]:
    """HNSW and IVF against flat: build s, search ms per query (k rows, one at a time), recall@1 and @10 rows."""
    faiss.omp_set_num_threads(1)
    vectors = flat.reconstruct_n(0, flat.ntotal)
    exact = flat.search(queries, k)[1]

    def judge(index: faiss.Index) -> dict[str, float]:
        times, found = [], []
        for q in queries:
            started = time.perf_counter()
            found.append(index.search(q[None, :], k)[1][0])
            times.append(time.perf_counter() - started)
        found_arr = np.array(found)
        top10 = np.mean([len(set(found_arr[i, :10]) & set(exact[i, :10])) / 10 for i in range(len(queries))])
        return {"search_ms_p50": statistics.median(times) * 1000, "recall_at_1": float(np.mean(found_arr[:, 0] == exact[:, 0])),
                "recall_at_10": float(top10)}

    out: dict[str, object] = {"flat": judge(flat)}
    started = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 80
    hnsw.add(vectors)
    build = time.perf_counter() - started
    for ef in (256, 512):
        hnsw.hnsw.efSearch = ef
        out[f"hnsw32_ef{ef}"] = {**judge(hnsw), "build_s": build}
    nlist = int(4 * np.sqrt(len(vectors)))
    started = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(vectors.shape[1]), vectors.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors[np.random.default_rng(0).choice(len(vectors), size=min(len(vectors), 40 * nlist), replace=False)])
    ivf.add(vectors)
    build = time.perf_counter() - started
    for nprobe in (8, 32):
        ivf.nprobe = nprobe
        out[f"ivf{nlist}_nprobe{nprobe}"] = {**judge(ivf), "build_s": build}
    return out


def one_size(data_dir: Path, queries_file: Path, dev_tsv: Path, n: int) -> dict[str, object]:
    from bot.service import encoder_spec
    from bot.settings import Settings
    from index.encoders import load_encoder

    base = load_index(data_dir)
    queries = [json.loads(line)["query"] for line in queries_file.read_text(encoding="utf-8").splitlines()][:300]
    encoder = load_encoder(encoder_spec(Settings(data_dir=data_dir, encoder_threads=1)))
    qvec = encoder.encode_queries(queries)
    started = time.perf_counter()
    texts = synthetic_texts(dev_tsv, n)
    made_s = time.perf_counter() - started
    index = synthetic_index(base, texts)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        publish_index(index, Path(tmp))
        publish_s = time.perf_counter() - started
        started = time.perf_counter()
        loaded = load_index(Path(tmp))
        _ = loaded.lexical
        load_s = time.perf_counter() - started
    rank_ms = time_rank(index, qvec, queries)
    result = {"n": n, "texts_s": made_s, "index_s": index.build_index_seconds, "publish_s": publish_s,  # type: ignore[attr-defined]
              "load_s": load_s, "rank_ms_p50": rank_ms, "encode_texts": len(texts)}
    result["approximate"] = approximate(index.vectors, np.ascontiguousarray(qvec[:200], dtype=np.float32))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main(argv: list[str]) -> int:
    if argv[:1] == ["--one"]:
        print(json.dumps(one_size(Path(argv[1]), Path(argv[2]), Path(argv[3]), int(argv[4]))))
        return 0
    data_dir, queries, dev = argv[:3]
    for n in argv[3:]:
        proc = subprocess.run([sys.executable, __file__, "--one", data_dir, queries, dev, n], capture_output=True,
                              text=True, timeout=1500, cwd=ROOT)
        if proc.returncode:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 1
        print(proc.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
