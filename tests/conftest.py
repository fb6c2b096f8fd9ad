"""Shared fixtures: a tiny KB, the real bundled encoder, a real server on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
ARTIFACTS = ROOT / "test-artifacts"

# The suite serves the bundled engine: the default `auto` encoder's one-time ONNX export (~30 s, 3 GB of RAM)
# is tested once, on purpose, by tests/test_default_encoder.py, not triggered by every server a test starts.
os.environ["FAQBOT_ENCODER"] = "bundled"

# Tests send their requests from 127.0.0.1, which the default settings exempt from rate limits (like any
# same-host client); tests of the limits themselves set `rate_limit_exempt_ips=[]` (tests/test_limits.py).

TINY_KB = textwrap.dedent(
    """\
    # A tiny shop FAQ for tests
    version: 1
    faqs:
      - id: invoice
        question: 是否支持开具发票？
        paraphrases:
          - 你们的产品能开发票吗？
          - 可以开票吗
        answer: 支持。下单后在“我的订单”中申请电子发票即可。
        tags: [billing]
      - id: return_howto
        question: 怎么退货？
        paraphrases:
          - 我想退货怎么操作
          - 退货流程是什么
        answer: 在“我的订单”里点“申请售后”，选择退货退款。
        tags: [aftersales]
      - id: shipping_time
        question: 下单后多久发货？
        paraphrases:
          - 什么时候发货
          - 付款后几天能发出
        answer: 现货商品 48 小时内发货。
        tags: [shipping]
      - id: change_password
        question: 怎么修改登录密码？
        paraphrases:
          - 密码忘了怎么办
          - 如何重置密码
        answer: 在“账户设置 - 安全”里修改或重置密码。
        tags: [account]
      - id: member_points
        question: 会员积分有什么用？
        paraphrases:
          - 积分可以抵现吗
          - 积分怎么使用
        answer: 积分可在结算时抵扣现金，100 积分抵 1 元。
        tags: [membership]
    """
)


@pytest.fixture
def tiny_kb(tmp_path: Path) -> Path:
    """A directory holding one small KB file (`faq.yaml`)."""
    kb_dir = tmp_path / "kb"
    kb_dir.mkdir()
    (kb_dir / "faq.yaml").write_text(TINY_KB, encoding="utf-8")
    return kb_dir


@pytest.fixture(scope="session")
def bundled_encoder():
    """The real bundled encoder, loaded once per test session."""
    from index.encoders import BundledEncoder

    return BundledEncoder(kb_prefix="query")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, seconds: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{base} not ready after {seconds}s")


class ThreadServer(uvicorn.Server):
    """uvicorn in a thread of the test process (port 0 -> a free port), stopped by the fixture."""

    def install_signal_handlers(self) -> None:
        """Leave signals alone: the main thread belongs to pytest."""

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[str]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            while not self.started:
                time.sleep(0.01)
            port = self.servers[0].sockets[0].getsockname()[1]
            yield f"http://127.0.0.1:{port}"
        finally:
            self.should_exit = True
            thread.join(timeout=10)


@contextlib.contextmanager
def serve_app(app) -> Iterator[str]:
    """Serve an ASGI app on a free loopback port in this process; yields the base URL once ready."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    with ThreadServer(config).run_in_thread() as base:
        wait_ready(base)
        yield base


@contextlib.contextmanager
def serve_kb_text(root: Path, kb_text: str, encoder) -> Iterator[str]:
    """The full app serving one KB written from `kb_text` under `root` (its data dir beside it)."""
    from admin.web.app import build_app
    from bot.settings import Settings

    (root / "kb").mkdir()
    (root / "kb" / "faq.yaml").write_text(kb_text, encoding="utf-8")
    with serve_app(build_app(Settings(kb=root / "kb", data_dir=root / "var"), encoder=encoder)) as base:
        yield base


@pytest.fixture
def make_settings(tmp_path: Path, tiny_kb: Path):
    """Settings for a test: the tiny KB, a temp data dir; keyword overrides on top."""
    from bot.settings import Settings

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {"kb": tiny_kb, "data_dir": tmp_path / "var"}
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def live_app(make_settings, bundled_encoder) -> Iterator[str]:
    """A real uvicorn serving the full app (bot + admin) on the tiny KB; yields its base URL."""
    from admin.web.app import build_app

    with serve_app(build_app(make_settings(), encoder=bundled_encoder)) as base:
        yield base


@contextlib.contextmanager
def faqbot_serve(kb: Path, data_dir: Path, *, env: dict[str, str] | None = None,
                 extra_args: tuple[str, ...] = (), ready_seconds: float = 180.0,
                 log_file: Path | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """`faqbot serve` as a real subprocess on a free loopback port; stopped (then killed) on exit.

    Its output goes to `log_file` when given (kept, for the test to read), else to a temporary file.
    """
    port = free_port()
    full_env = {**os.environ, "FAQBOT_DATA_DIR": str(data_dir), **(env or {})}
    log = (log_file.open("w+", encoding="utf-8") if log_file is not None
           else tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False))  # noqa: SIM115 - outlives this block
    proc = subprocess.Popen(
        [sys.executable, "-m", "admin.cli", "serve", "--kb", str(kb), "--data-dir", str(data_dir),
         "--host", "127.0.0.1", "--port", str(port), *extra_args],
        cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(base, ready_seconds, proc)
        except (TimeoutError, RuntimeError) as exc:
            log.seek(0)
            raise RuntimeError(f"faqbot serve did not become ready: {exc}\n{log.read()[-3000:]}") from exc
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        if log_file is None:
            os.unlink(log.name)


TINY_BERT_CHARS = "是否支持开具发票你们的产品能吗可以票怎么退货我想操作流程什么下单后多久时候付款几天出修改登录密码忘了办如何重置会员积分有用抵现使"


@pytest.fixture(scope="module")
def tiny_st_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT with a character WordPiece vocab, saved as a sentence-transformers dir."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-bert")
    hf_dir = root / "hf"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(TINY_BERT_CHARS)) + list("abcdefghijklmnopqrstuvwxyz?？"))}
    backend = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    from tokenizers.processors import TemplateProcessing

    backend.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = models.Transformer(str(hf_dir), max_seq_length=64)
    pooling = models.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    model = SentenceTransformer(modules=[transformer, pooling], prompts={"query": "q ", "passage": "p "})
    st_dir = root / "st"
    model.save(str(st_dir))
    return st_dir


# Golden questions for the tiny KB (the regression gate of reloads).
TINY_GOLDEN = """\
version: 1
tests:
  - query: 下单之后多长时间发货
    expected: shipping_time
  - query: 退货要怎么弄
    expected: return_howto
  - query: 怎么改密码
    expected: change_password
  - query: 今天天气怎么样
    expected: null
"""
