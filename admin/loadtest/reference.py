"""The reference of issue #21: what a user would build by hand from the same weights, timed by `faqbot bench`.

The bench's own bare-encoder phase times faqbot's encoder; the issue's targets are set against a
plain, standard build instead, so that faqbot's serving cost is judged against the obvious
alternative and not against itself:

    the weights as a sentence-transformers dir (`faqbot model export-bundled`, or the data dir's
    `models/bundled` when it is already there) -> torch.onnx.export (opset 17, the legacy exporter,
    eager attention) -> onnxruntime `quantize_dynamic(weight_type=QInt8)` with its defaults (one
    scale per weight tensor, every MatMul quantised) -> an InferenceSession with 1 intra-op thread,
    the `tokenizers` fast tokenizer, the model's "query: " prompt, mean pooling, L2 normalisation;
    batches padded to their longest text.

The int8 file is cached under `<data_dir>/models/reference-int8/<key>/` (key: the source weights'
path, size and mtime), so only the first run pays the export (~1 min, ~3 GB RAM, in a child process:
the bench itself never imports torch). Timing also runs in a child process, like the bare encoder.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from index.datadir import DataDir, bundled_export_dir
from index.filelock import FileLock

REFERENCE_DIR = "reference-int8"
INT8_NAME = "model_int8.onnx"
REFERENCE_BATCH = 16
PACED_GAP_S = 0.005  # idle time before each "paced" question: about what a core idles between requests at c1
OPSET = 17
_ROOT = Path(__file__).resolve().parents[2]


def cache_dir(models_dir: Path, source: Path) -> Path:
    """Where the reference made from `source` is cached (a new key when the weights change)."""
    weights = next((source / n for n in ("model.safetensors", "pytorch_model.bin") if (source / n).is_file()), None)
    stamp = f"{source.resolve()}|{weights.stat().st_size}|{weights.stat().st_mtime_ns}" if weights else str(source)
    return Path(models_dir) / REFERENCE_DIR / hashlib.sha256(stamp.encode()).hexdigest()[:12]


def default_source(models_dir: Path) -> Path:
    """The bundled weights as a sentence-transformers dir (exported there once if missing)."""
    return bundled_export_dir(models_dir)


def build_reference(source: Path, models_dir: Path) -> Path:
    """The cached reference int8 file for `source`, building it first if needed (runs torch: call in a child)."""
    target = cache_dir(models_dir, source) / INT8_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / ".build.lock").hold():
        if target.is_file():
            return target
        if source == default_source(models_dir):
            from index.default_model import ensure_standard_export

            ensure_standard_export(source)  # `faqbot model export-bundled`, once per data dir
        fp32 = target.with_name("model.onnx")
        _torch_export(source, fp32)
        _quantize_default(fp32, target)
        fp32.unlink(missing_ok=True)  # 470 MB intermediate
        (target.parent / "source.json").write_text(json.dumps({"source": str(source.resolve())}), encoding="utf-8")
    return target


def _torch_export(source: Path, out: Path) -> None:
    """torch.onnx.export of the transformer body (token embeddings out), as the transformers docs do it."""
    import warnings

    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(source), attn_implementation="eager", **_model_args(source)).eval()

    class _Body(torch.nn.Module):  # keyword inputs: transformers 5 rejects positional ones in tracing
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.tensor([[0, 41, 12, 6, 2], [0, 41, 12, 2, 1]], dtype=torch.long) % int(model.config.vocab_size)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], dtype=torch.long)
    tmp = out.with_suffix(".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = {0: "batch", 1: "sequence"}
        torch.onnx.export(_Body(model).eval(), (ids, mask), str(tmp), input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"], opset_version=OPSET, do_constant_folding=True,
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
                          dynamo=False)
    tmp.replace(out)


def _model_args(source: Path) -> dict[str, object]:
    """What the sentence-transformers dir tells AutoModel (e5 here: no pooler, which it never uses)."""
    try:
        config = json.loads((source / "sentence_bert_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    args = config.get("model_args") or {} if isinstance(config, dict) else {}
    return {k: v for k, v in args.items() if k == "add_pooling_layer"}


def _quantize_default(src: Path, dst: Path) -> None:
    """onnxruntime's dynamic quantisation with its defaults but QInt8 weights (per tensor, nothing excluded)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = dst.with_suffix(".tmp")
    logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing": a child process, nothing else logs
    quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8)
    tmp.replace(dst)


class ReferenceEncoder:
    """The plain encoder over the reference file: tokenize, pad, run, mean-pool, normalise."""

    def __init__(self, model: Path, source: Path) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=512)
        pad = self.tokenizer.token_to_id("<pad>")
        self.tokenizer.enable_padding(pad_id=int(pad) if pad is not None else 0)
        self.prefix = _query_prompt(source)

    def encode(self, texts: Sequence[str]):  # noqa: ANN201 - numpy is imported in the child only
        import numpy as np

        encs = self.tokenizer.encode_batch([self.prefix + t for t in texts])
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def _query_prompt(source: Path) -> str:
    """The model's own query prompt ("query: " for e5), as sentence-transformers would prepend it."""
    try:
        prompts = json.loads((source / "config_sentence_transformers.json").read_text(encoding="utf-8"))["prompts"]
        return str(prompts.get("query", "query: "))
    except (OSError, ValueError, KeyError, TypeError):
        return "query: "


def measure(model: Path, source: Path, questions: Sequence[str], seconds: float) -> dict[str, object]:
    """Single-question p50 ms (back to back, and "paced": each after an idle gap) and batch-16 texts/s of the
    reference over `questions` (cycled).

    Back to back, the int8 weights (~21 MB read per question) stay in the CPU's caches; a server at
    concurrency 1 idles between requests and reads them again, which the paced figure shows.
    """
    encoder = ReferenceEncoder(model, source)
    texts = iter(_cycle(questions))
    encoder.encode([next(texts) for _ in range(REFERENCE_BATCH)])  # warm both paths
    encoder.encode([next(texts)])
    single = _single_p50_ms(encoder, texts, seconds, gap=0.0)
    # the same after the core idled as it does between requests (caches cool)
    paced = _single_p50_ms(encoder, texts, seconds / 2, gap=PACED_GAP_S)
    done, spent = 0, 0.0
    deadline = time.perf_counter() + seconds / 2
    while time.perf_counter() < deadline or done < 2 * REFERENCE_BATCH:
        batch = [next(texts) for _ in range(REFERENCE_BATCH)]
        started = time.perf_counter()
        encoder.encode(batch)
        spent += time.perf_counter() - started
        done += REFERENCE_BATCH
    return {"model": str(model), "source": str(source), "threads": 1, "single_ms_p50": single,
            "paced_single_ms_p50": paced, "paced_gap_ms": PACED_GAP_S * 1000,
            "batch": REFERENCE_BATCH, "batch_texts_per_s": done / spent}


def _single_p50_ms(encoder: ReferenceEncoder, texts: Iterator[str], seconds: float, *, gap: float) -> float:
    """p50 ms of one-question calls for `seconds` (at least 20 calls), each after sleeping `gap` seconds."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 20:
        text = next(texts)
        if gap:
            time.sleep(gap)
        started = time.perf_counter()
        encoder.encode([text])
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def _cycle(items: Sequence[str]):  # noqa: ANN202 - a generator of str
    while True:
        yield from items


def run_reference(data_dir: Path, questions: Sequence[str], seconds: float, source: Path | None = None,
                  timeout: float = 1800.0) -> dict[str, object]:
    """Build (once, cached) and time the reference in child processes: its figures, or {"skipped": why}."""
    models_dir = DataDir(data_dir).models.resolve()
    source = (source or default_source(models_dir)).resolve()
    if source != default_source(models_dir).resolve() and not (source / "config.json").is_file():
        return {"skipped": f"cannot build the reference: {source} is not a model directory (no config.json)"}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    started = time.perf_counter()
    build = _child(["build", str(source), str(models_dir)], env, timeout)
    if "error" in build:
        return {"skipped": f"cannot build the reference: {build['error']}"}
    built_s = time.perf_counter() - started
    questions_file = Path(build["model"]).with_name("bench-questions.json")
    questions_file.write_text(json.dumps(list(questions)[:5000], ensure_ascii=False), encoding="utf-8")
    figures = _child(["measure", build["model"], str(source), str(questions_file), str(seconds)], env, timeout)
    if "error" in figures:
        return {"skipped": f"cannot time the reference: {figures['error']}"}
    return {**figures, "build_s": built_s}


def _child(args: list[str], env: dict[str, str], timeout: float) -> dict[str, object]:
    """One step in `python -m admin.loadtest.reference`; its JSON line, or {"error": its last words}."""
    try:
        proc = subprocess.run([sys.executable, "-m", "admin.loadtest.reference", *args], capture_output=True,
                              text=True, env=env, cwd=_ROOT, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or [f"exit {proc.returncode}"]
        return {"error": tail[0][-300:]}
    return json.loads(lines[-1])


def _main(argv: Sequence[str]) -> int:
    if argv[:1] == ["build"] and len(argv) == 3:
        print(json.dumps({"model": str(build_reference(Path(argv[1]), Path(argv[2])))}))
        return 0
    if argv[:1] == ["measure"] and len(argv) == 5:
        questions = json.loads(Path(argv[3]).read_text(encoding="utf-8"))
        print(json.dumps(measure(Path(argv[1]), Path(argv[2]), questions, float(argv[4]))))
        return 0
    print("usage: python -m admin.loadtest.reference build SOURCE MODELS_DIR | measure MODEL SOURCE "
          "QUESTIONS.json SECONDS (run by faqbot bench)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
