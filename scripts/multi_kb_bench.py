"""Many KBs in one process vs one big KB (docs/performance.md, "Many knowledge bases"): time to ready,
RSS and /chat latency of a real `faqbot serve` (one worker, the configured encoder, `auto` by default).

KBs are made from the shipped ones (faq/examples/* and faq/sample, 300 FAQs in all):
  many: KB i takes 50 consecutive FAQs of that pool, starting at i*37 (mod 300), ids and texts as shipped;
  big:  the pool 34 times over, each copy's questions and paraphrases prefixed with a shop name
        (`【店铺07】`), ids suffixed: 10,200 distinct FAQs.
Each server is started twice: the first start builds every index, the second only loads them.
/chat: one keep-alive client, sequential, a bounded number of requests; each asks a random KB one
of its own questions with a prefix and suffix (`请问…呢`, so the exact-match table does not answer it)
picked among several, so most requests reach the encoder and some hit the query cache.

    .venv/bin/python scripts/multi_kb_bench.py WORKDIR [--models DIR] [--kbs 200] [--faqs 50] [--big 10000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from faq import load_kb  # noqa: E402

FRAMES = ("请问{}呢", "想问下{}", "{}？麻烦告诉我", "你好，{}")


def pool() -> list[dict[str, object]]:
    """Every shipped FAQ as a plain dict (id, question, paraphrases, answer)."""
    faqs = []
    for path in [*sorted((ROOT / "faq" / "examples").iterdir()), ROOT / "faq" / "sample"]:
        for faq in load_kb(path).faqs:
            faqs.append({"id": f"{path.name}-{faq.id}", "question": faq.question,
                         "paraphrases": list(faq.paraphrases), "answer": faq.answer})
    return faqs


def write_kb(folder: Path, faqs: list[dict[str, object]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kb.yaml").write_text(yaml.safe_dump({"version": 1, "faqs": faqs}, allow_unicode=True), encoding="utf-8")
    return folder


def many_kbs(work: Path, n: int, per_kb: int) -> dict[str, Path]:
    faqs = pool()
    kbs = {}
    for i in range(n):
        start = (i * 37) % len(faqs)
        chosen = [faqs[(start + j) % len(faqs)] for j in range(per_kb)]
        kbs[f"kb{i:03d}"] = write_kb(work / "kbs" / f"kb{i:03d}", chosen)
    return kbs


def big_kb(work: Path, n: int) -> dict[str, Path]:
    faqs = pool()
    out = []
    for copy in range(-(-n // len(faqs))):
        brand = f"【店铺{copy:02d}】"
        out += [{**f, "id": f"{f['id']}-{copy}", "question": brand + str(f["question"]),
                 "paraphrases": [brand + p for p in f["paraphrases"]]} for f in faqs]
    return {"big": write_kb(work / "big", out)}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serve(kbs: dict[str, Path], data_dir: Path, port: int, ready_seconds: float = 1800) -> tuple[subprocess.Popen, float]:
    """`faqbot serve` on these KBs; (process, seconds until /readyz said 200)."""
    env = {**os.environ, "FAQBOT_KB": ",".join(f"{k}={v}" for k, v in kbs.items()), "FAQBOT_LOG_LEVEL": "warning",
           "FAQBOT_RATE_LIMIT_ENABLED": "false"}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "admin.cli", "serve", "--data-dir", str(data_dir),
                             "--port", str(port)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=open(data_dir / "serve.log", "a"))  # noqa: SIM115 - kept for the child
    while time.monotonic() - started < ready_seconds:
        if proc.poll() is not None:
            raise RuntimeError(f"faqbot serve exited {proc.returncode}: see {data_dir / 'serve.log'}")
        with contextlib.suppress(httpx.HTTPError):  # not listening yet: ask again
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return proc, time.monotonic() - started
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError("not ready")


def chat_run(port: int, kbs: dict[str, Path], requests: int, seed: int = 0) -> dict[str, float]:
    rng = random.Random(seed)
    questions = {name: [t for _, t in load_kb(path).texts()] for name, path in kbs.items()}
    names = list(kbs)
    times = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for _ in range(requests):
            name = rng.choice(names)
            message = rng.choice(FRAMES).format(rng.choice(questions[name]).rstrip("？?"))
            started = time.perf_counter()
            response = client.post("/chat", json={"message": message, "kb": name})
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.text
    times.sort()
    return {"requests": requests, "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[int(0.95 * len(times)) - 1], 1)}


def measure(label: str, kbs: dict[str, Path], work: Path, models: Path | None, requests: int, port: int) -> dict:
    data_dir = work / f"data-{label}"
    data_dir.mkdir(parents=True, exist_ok=True)
    if models is not None and not (data_dir / "models").exists():
        (data_dir / "models").symlink_to(models.resolve(), target_is_directory=True)
    result: dict[str, object] = {"label": label, "kbs": len(kbs),
                                 "faqs": sum(len(load_kb(p).faqs) for p in kbs.values())}
    proc, seconds = serve(kbs, data_dir, port)
    result["first_start_ready_s"] = round(seconds, 1)
    proc.terminate()
    proc.wait(60)
    proc, seconds = serve(kbs, data_dir, port)
    try:
        result["restart_ready_s"] = round(seconds, 1)
        result["rss_ready_mb"] = round(rss_mb(proc.pid), 0)
        result["chat"] = chat_run(port, kbs, requests)
        result["rss_after_chat_mb"] = round(rss_mb(proc.pid), 0)
    finally:
        proc.terminate()
        proc.wait(60)
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return result


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("work", type=Path)
    p.add_argument("--models", type=Path, help="an existing <data_dir>/models to link (auto's ONNX export)")
    p.add_argument("--kbs", type=int, default=200)
    p.add_argument("--faqs", type=int, default=50)
    p.add_argument("--big", type=int, default=10_000)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--port", type=int, default=8765)
    args = p.parse_args(argv)
    shutil.rmtree(args.work / "kbs", ignore_errors=True)
    measure("many", many_kbs(args.work, args.kbs, args.faqs), args.work, args.models, args.requests, args.port)
    if args.big:
        measure("big", big_kb(args.work, args.big), args.work, args.models, args.requests, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
