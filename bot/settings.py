"""Every setting of faqbot in one place (environment variables `FAQBOT_*`; CLI flags win).

The README's settings table is generated from / checked against this class (tests/test_docs.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SAMPLE_KB = Path(__file__).resolve().parent.parent / "faq" / "sample"


class Settings(BaseSettings):
    """faqbot's configuration; each field's description is its documentation."""

    model_config = SettingsConfigDict(env_prefix="FAQBOT_", extra="ignore")

    data_dir: Path = Field(Path("var"), description="Runtime files: index versions, the SQLite database, exported and fine-tuned models.")
    kb: Path = Field(SAMPLE_KB, description="The FAQ knowledge base: one YAML file or a directory of them.")
    encoder: str = Field("bundled", description="Encoder: `bundled`, `sentence-transformers:<model id or path>` or `onnx:<path>`.")
    kb_prefix: Literal["query", "passage"] = Field(
        "query", description="Prompt used on the KB side for e5-style models: `query` (symmetric, measured better for FAQ questions) or `passage`."
    )
    query_prompt: str | None = Field(None, description="Prefix put before user questions (default: the model's own `query` prompt).")
    passage_prompt: str | None = Field(None, description="Prefix put before KB texts (default: per `kb_prefix`).")
    max_seq_length: int = Field(512, ge=8, le=8192, description="Longest input in tokens; longer text is truncated.")
    encoder_threads: int = Field(1, ge=1, le=64, description="Threads per encoder (per worker process). 1 per process is steadiest on a shared box.")
    threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Cosine threshold for answering; empty = the KB's `defaults.threshold`, else the calibrated one."
    )
    top_k: int = Field(3, ge=1, le=20, description="How many alternatives /chat returns by default.")
    max_message_chars: int = Field(1000, ge=1, le=100_000, description="Longest accepted message, in characters (longer: HTTP 422).")
    fallback_answer: str = Field(
        "抱歉，这个问题我暂时还不会回答，已经记录下来，客服同事会尽快补充。",
        description="What the bot says when no FAQ clears the threshold.",
    )
    clarify_prefix: str = Field("您是想问以下哪个问题？", description="Text shown before the choices when two FAQs are too close to call.")
    handoff_url: str | None = Field(None, description="Optional “转人工” link shown by the chat widget with the fallback answer.")
    cors_origins: list[str] = Field(["*"], description="Origins allowed to call the API from a browser (JSON list).")
    database_url: str | None = Field(None, description="SQLAlchemy URL of the miss log; default SQLite `<data_dir>/faqbot.db`.")
    admin_token: SecretStr | None = Field(None, description="Bearer token for `/admin/...`; unset = admin API and page are off (404).")
    auto_build: bool = Field(True, description="Build the index at start-up when it is missing or stale (else refuse to serve it).")
    host: str = Field("127.0.0.1", description="Address `faqbot serve` binds.")
    port: int = Field(8000, ge=0, le=65535, description="Port `faqbot serve` binds.")
    workers: int = Field(1, ge=1, le=64, description="Worker processes for `faqbot serve`.")
    log_level: str = Field("info", description="Log level (debug, info, warning, error).")

    @field_validator("admin_token")
    @classmethod
    def _refuse_weak_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() == "":
            return None
        if value is not None and len(value.get_secret_value()) < 12:
            raise ValueError("FAQBOT_ADMIN_TOKEN must be at least 12 characters (use e.g. `openssl rand -hex 16`)")
        return value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{Path(self.data_dir).resolve() / 'faqbot.db'}"
