"""Every setting of faqbot in one place (environment variables `FAQBOT_*`; CLI flags win).

The README's settings table is generated from / checked against this class (tests/test_docs.py).
"""

from __future__ import annotations

import os
import re
from datetime import tzinfo
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from index.datadir import DEFAULT_KB, DataDir

KB_NAME = re.compile(r"[a-z0-9_-]{1,32}")
SAMPLE_KB = Path(__file__).resolve().parent.parent / "faq" / "sample"


class Settings(BaseSettings):
    """faqbot's configuration; each field's description is its documentation."""

    model_config = SettingsConfigDict(env_prefix="FAQBOT_", extra="ignore")

    data_dir: Path = Field(Path("var"), description="Runtime files: index versions, the SQLite database, exported and fine-tuned models.")
    kb: Path = Field(SAMPLE_KB, description="The FAQ knowledge base: one YAML file or a directory of them; several as "
                     "`name=path,name2=path2` (names `[a-z0-9_-]{1,32}`; a plain path is the KB `default`; /chat without `kb` asks the first).")
    encoder: str = Field(
        "auto", description="Encoder: `auto` (the bundled model as ONNX int8, exported once into `<data_dir>/models` on first start; "
        "the bundled engine if that cannot run), `bundled`, `bundled:<file>` (a fine-tuned model packed with `faqbot model pack-bundled`), "
        "`sentence-transformers:<model id or path>` or `onnx:<path>`."
    )
    kb_prefix: Literal["query", "passage"] = Field(
        "query", description="Prompt used on the KB side for e5-style models: `query` (symmetric, measured better for FAQ questions) or `passage`."
    )
    query_prompt: str | None = Field(None, description="Prefix put before user questions (default: the model's own `query` prompt).")
    passage_prompt: str | None = Field(None, description="Prefix put before KB texts (default: per `kb_prefix`).")
    max_seq_length: int = Field(512, ge=8, le=8192, description="Longest input in tokens; longer text is truncated.")
    encoder_threads: int = Field(1, ge=1, le=64, description="Threads per encoder (per worker process). 1 per process is steadiest on a shared box.")
    # --- hot path (docs/performance.md) ---
    max_batch: int = Field(
        16, ge=1, le=256, description="Most questions the encoder worker encodes in one call; 1 = no micro-batching (each request encodes on its own)."
    )
    max_wait_ms: float = Field(
        2.0, ge=0, le=100, description="Longest the encoder worker waits for more questions to join a batch (only while more are expected)."
    )
    queue_size: int = Field(
        256, ge=1, le=100_000, description="Questions waiting for the encoder; past this /chat answers 503 at once instead of queueing."
    )
    cache_size: int = Field(
        10_000, ge=0, le=10_000_000, description="Query embeddings kept in the LRU cache, keyed by the normalised question; 0 = off."
    )
    exact_match: bool = Field(
        True, description="Skip the encoder when the normalised question equals an FAQ question or paraphrase (needs `kb_prefix=query`)."
    )
    log_flush_ms: float = Field(
        50.0, ge=0, le=5000, description="Chat-log rows are committed in batches at most this long after they arrive; misses commit at once."
    )
    threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Cosine threshold for answering instead of the confidence rule; empty = the KB's `defaults.threshold`, else the confidence rule."
    )
    min_confidence: float | None = Field(
        None, ge=0.0, le=100.0, description="Answer when the confidence (0-100, the measured chance the answer is right) reaches this; empty = the calibration's (50)."
    )
    top_k: int = Field(3, ge=1, le=20, description="How many alternatives /chat returns by default.")
    max_message_chars: int = Field(1000, ge=1, le=100_000, description="Longest accepted message, in characters (longer: HTTP 422).")
    fallback_answer: str = Field(
        "抱歉，这个问题我暂时还不会回答，已经记录下来，客服同事会尽快补充。",
        description="What the bot says when no FAQ clears the threshold.",
    )
    clarify_prefix: str = Field("您是想问以下哪个问题？", description="Text shown before the choices when two FAQs are too close to call.")
    handoff_url: str | None = Field(
        None, description="Optional “转人工” link: /chat returns it (`handoff_url`) with the fallback answer and whenever it offers a person "
        "(`handoff: true`); the widget shows it as a button, the webhooks append it."
    )
    timezone: str = Field(
        "Asia/Shanghai", description="Time zone of the FAQs' `valid_from`/`valid_to` dates and times without an offset (an IANA name)."
    )
    handoff_answer: str = Field(
        "好的，正在为您转接人工客服，请稍候。",
        description="What the bot says when a customer asks for a person (“转人工”) and no FAQ answers the message.",
    )
    widget_title: str = Field("在线客服", max_length=40, description="Chat widget header (a page can override it with `data-title` on the script tag).")
    widget_greeting: str = Field(
        "您好，我是智能客服，请问有什么可以帮您？", max_length=500,
        description="First message the chat widget shows (override with `data-greeting`).",
    )
    cors_origins: list[str] = Field(["*"], description="Origins allowed to call the API from a browser (JSON list).")
    database_url: str | None = Field(None, description="SQLAlchemy URL of the miss log; default SQLite `<data_dir>/faqbot.db`.")
    admin_token: SecretStr | None = Field(None, description="Bearer token for `/admin/...`; unset = admin API and page are off (404).")
    kb_admin_tokens: dict[str, SecretStr] = Field(
        {}, description="Admin tokens that see one KB each (JSON object `{\"courses\": \"token...\"}`); "
        "`FAQBOT_ADMIN_TOKEN` sees every KB."
    )
    channel_kbs: dict[str, str] = Field(
        {}, description="The KB each messaging channel answers from (JSON `{\"wecom\": \"courses\"}`); unset channels use the first KB."
    )
    auto_build: bool = Field(True, description="Build the index at start-up when it is missing or stale (else refuse to serve it).")
    watch_kb: bool = Field(
        False, description="Rebuild the index (gated by the golden questions, like `POST /admin/reload`) when a KB file changes; polls every 2 s."
    )
    host: str = Field("127.0.0.1", description="Address `faqbot serve` binds.")
    port: int = Field(8000, ge=0, le=65535, description="Port `faqbot serve` binds.")
    workers: int = Field(1, ge=1, le=64, description="Worker processes for `faqbot serve`.")
    encoder_workers: int = Field(
        0, ge=0, le=64, description="Encoder worker threads per process for encoders whose calls run in parallel (ONNX): "
        "0 = the CPU cores left to each process (cores / (workers x encoder threads)). The bundled engine and torch "
        "serialise their calls and always get one."
    )
    log_level: str = Field("info", description="Log level (debug, info, warning, error).")
    log_format: Literal["json", "text"] = Field(
        "json", description="`json`: one JSON object per log line, with the request id of the request it belongs to; `text`: plain lines."
    )

    # --- limits and shared state (docs/reliability.md) ---
    rate_limit_enabled: bool = Field(True, description="Token-bucket rate limits on /chat, /feedback, /similarity, /v1/embeddings and the webhooks (429 + Retry-After).")
    rate_limit_chat_per_minute: float = Field(60.0, gt=0, le=1_000_000, description="Sustained /chat and /feedback requests per minute per client (its `session_id`, else its IP).")
    rate_limit_chat_burst: int = Field(20, ge=1, le=1_000_000, description="Requests a /chat client may send at once before the per-minute rate applies.")
    rate_limit_similarity_per_minute: float = Field(120.0, gt=0, le=1_000_000, description="Sustained /similarity and /v1/embeddings requests per minute per IP.")
    rate_limit_similarity_burst: int = Field(30, ge=1, le=1_000_000, description="Burst of /similarity and /v1/embeddings requests per IP.")
    rate_limit_webhook_per_minute: float = Field(1200.0, gt=0, le=1_000_000, description="Sustained webhook deliveries per minute per sending IP (a platform sends for all its users).")
    rate_limit_webhook_burst: int = Field(200, ge=1, le=1_000_000, description="Burst of webhook deliveries per sending IP.")
    rate_limit_ip_per_minute: float = Field(
        600.0, gt=0, le=1_000_000, description="Ceiling per IP over all rate-limited routes, whatever session ids it sends (they are chosen by the client)."
    )
    rate_limit_ip_burst: int = Field(100, ge=1, le=1_000_000, description="Burst of the per-IP ceiling.")
    rate_limit_exempt_ips: list[str] = Field(
        ["127.0.0.1", "::1"],
        description="Client IPs never rate limited (JSON list): by default loopback, i.e. tools and integrations on the same host. "
        "Behind a proxy on the same host, make it send X-Forwarded-For (FORWARDED_ALLOW_IPS) or set this to `[]`.",
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, le=100_000_000, description="Largest request body; larger (declared or streamed) gets HTTP 413 before it is read.")
    request_timeout_seconds: float = Field(
        15.0, gt=0, le=600, description="A public API request not answered within this gets HTTP 503 `timeout`, so slow calls cannot pile up."
    )
    redis_url: str | None = Field(
        None, description="Redis URL (`redis://127.0.0.1:6379/0`) shared by replicas: rate-limit buckets, query-embedding cache, webhook event ids. Unset = in-process."
    )
    redis_timeout_seconds: float = Field(0.25, gt=0, le=30, description="Timeout of one Redis call; past it the replica goes degraded (local limits and cache) instead of waiting.")
    redis_retry_seconds: float = Field(5.0, gt=0, le=3600, description="While degraded, how often to try Redis again.")
    redis_cache_ttl_seconds: int = Field(86400, ge=60, le=30 * 86400, description="How long a query embedding stays in the Redis cache.")

    # --- messaging channels (docs/channels.md): a channel is on when all its secrets are set ---
    webhook_secret: SecretStr | None = Field(
        None, description="`generic` webhook: HMAC-SHA256 key of `X-Faqbot-Signature` (unset = `/webhooks/generic` is off)."
    )
    webhook_max_age_seconds: int = Field(
        300, ge=30, le=3600, description="Signed webhooks with a timestamp further than this from now are refused as stale (DingTalk: its documented 1 hour)."
    )
    webhook_event_ttl_seconds: int = Field(
        86400, ge=3600, le=30 * 86400, description="How long delivered event ids are kept in the database to drop platform retries and replays."
    )
    wecom_token: SecretStr | None = Field(None, description="WeCom (企业微信) app callback Token.")
    wecom_aes_key: SecretStr | None = Field(None, description="WeCom callback EncodingAESKey (43 characters).")
    wecom_corp_id: str | None = Field(None, description="WeCom CorpID (企业ID); decrypted messages must carry it.")
    wechat_token: SecretStr | None = Field(None, description="WeChat Official Account (公众号) server Token.")
    wechat_aes_key: SecretStr | None = Field(None, description="WeChat Official Account EncodingAESKey (43 characters; safe mode).")
    wechat_app_id: str | None = Field(None, description="WeChat Official Account AppID; decrypted messages must carry it.")
    dingtalk_app_secret: SecretStr | None = Field(None, description="DingTalk (钉钉) internal robot AppSecret, key of the outgoing `sign`.")
    feishu_verification_token: SecretStr | None = Field(None, description="Feishu/Lark event subscription Verification Token.")
    feishu_encrypt_key: SecretStr | None = Field(None, description="Feishu/Lark Encrypt Key (events are encrypted and signed with it).")
    feishu_app_id: str | None = Field(None, description="Feishu/Lark App ID (for replies through the API).")
    feishu_app_secret: SecretStr | None = Field(None, description="Feishu/Lark App Secret (for replies through the API).")
    feishu_api_base: str = Field("https://open.feishu.cn", description="Feishu API base URL (Lark: https://open.larksuite.com).")
    slack_signing_secret: SecretStr | None = Field(None, description="Slack app Signing Secret.")
    slack_bot_token: SecretStr | None = Field(None, description="Slack Bot User OAuth Token (`xoxb-...`) for `chat.postMessage`.")
    slack_api_base: str = Field("https://slack.com/api", description="Slack Web API base URL.")
    telegram_secret_token: SecretStr | None = Field(None, description="Telegram `secret_token` given to setWebhook; checked on every update.")
    telegram_bot_token: SecretStr | None = Field(None, description="Telegram bot token (optional: its bot id lets group replies to the bot count as questions).")
    outbound_timeout_seconds: float = Field(10.0, gt=0, le=120, description="Timeout of one outbound call to a platform API (Feishu, Slack).")
    outbound_attempts: int = Field(4, ge=1, le=10, description="Tries per outbound reply before it is kept as a dead letter.")
    outbound_backoff_seconds: float = Field(1.0, ge=0, le=60, description="First retry delay of outbound replies; doubles per try.")

    # Every KB by name (first = the one /chat asks without `kb`), and the one these settings are for.
    _kbs: dict[str, Path] = PrivateAttr(default_factory=dict)
    _kb_name: str = PrivateAttr(DEFAULT_KB)

    @model_validator(mode="after")
    def _split_knowledge_bases(self) -> Settings:
        """`kb` may name several KBs (`a=x,b=y`): keep them by name, and `kb` is the first one's path."""
        self._kbs = parse_kbs(str(self.kb))
        self._kb_name, self.kb = next(iter(self._kbs.items()))
        for name, token in self.kb_admin_tokens.items():
            if name not in self._kbs:
                raise ValueError(f"FAQBOT_KB_ADMIN_TOKENS: no KB named {name!r} (KBs: {', '.join(self._kbs)})")
            if len(token.get_secret_value()) < 12:
                raise ValueError(f"FAQBOT_KB_ADMIN_TOKENS: the token of {name!r} must be at least 12 characters")
        for channel, name in self.channel_kbs.items():
            if name not in self._kbs:
                raise ValueError(f"FAQBOT_CHANNEL_KBS: channel {channel!r} names no KB {name!r} (KBs: {', '.join(self._kbs)})")
        return self

    @property
    def kb_paths(self) -> dict[str, Path]:
        """Every KB of the deployment by name, in the order given (a plain path: `{"default": path}`)."""
        return dict(self._kbs) if len(self._kbs) > 1 else {self._kb_name: self.kb}

    @property
    def kb_name(self) -> str:
        """The KB these settings serve (`kb` is its path)."""
        return self._kb_name

    @property
    def layout(self) -> DataDir:
        """The data dir with this KB's index paths (index.datadir knows where they are)."""
        return DataDir(self.data_dir, kb=self._kb_name)

    def only(self, name: str) -> Settings:
        """These settings with the KB `name` alone (`faqbot reload --kb NAME`)."""
        copy = self.for_kb(name)
        copy._kbs = {name: copy.kb}
        return copy

    def for_kb(self, name: str) -> Settings:
        """The same settings for the KB `name`: what its FaqService, rebuilds and commands read."""
        paths = self.kb_paths
        if name not in paths:
            raise KeyError(name)
        copy = self.model_copy(update={"kb": paths[name]})
        copy._kbs, copy._kb_name = paths, name
        return copy

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        """Fail at start-up, not on the first question, on a zone name that does not exist."""
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Asia/Shanghai or UTC)") from exc
        return value

    @property
    def zone(self) -> tzinfo:
        """`timezone` as a tzinfo."""
        from zoneinfo import ZoneInfo

        return ZoneInfo(self.timezone)

    @field_validator("admin_token")
    @classmethod
    def _refuse_weak_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() == "":
            return None
        if value is not None and len(value.get_secret_value()) < 12:
            raise ValueError("FAQBOT_ADMIN_TOKEN must be at least 12 characters (use e.g. `openssl rand -hex 16`)")
        return value

    @field_validator(
        "webhook_secret", "wecom_token", "wecom_aes_key", "wechat_token", "wechat_aes_key", "dingtalk_app_secret",
        "feishu_verification_token", "feishu_encrypt_key", "feishu_app_secret", "slack_signing_secret",
        "slack_bot_token", "telegram_secret_token", "telegram_bot_token", mode="after",
    )
    @classmethod
    def _empty_secret_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        """An empty env var (`FAQBOT_SLACK_BOT_TOKEN=`) leaves its channel off instead of enabling it half-configured."""
        return None if value is not None and value.get_secret_value().strip() == "" else value

    @field_validator("wecom_aes_key", "wechat_aes_key", mode="after")
    @classmethod
    def _check_encoding_aes_key(cls, value: SecretStr | None) -> SecretStr | None:
        """Fail at start-up, not on the first message, when an EncodingAESKey was pasted wrong."""
        if value is None:
            return None
        import base64
        import binascii

        key = value.get_secret_value().strip()
        try:
            ok = len(key) == 43 and len(base64.b64decode(key + "=", validate=True)) == 32
        except binascii.Error:
            ok = False
        if not ok:
            raise ValueError("an EncodingAESKey is 43 base64 characters (copy it from the platform console)")
        return SecretStr(key)

    @property
    def resolved_encoder_workers(self) -> int:
        """`encoder_workers`, or (0) this machine's usable cores shared out over the processes and their threads."""
        if self.encoder_workers:
            return self.encoder_workers
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // (self.workers * self.encoder_threads))

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or DataDir(self.data_dir).database_url


def parse_kbs(value: str) -> dict[str, Path]:
    """`path` or `name=path,name2=path2` as KBs by name; ValueError (one line) on a name or path that cannot work.

    A path that exists is a plain path even if it holds `=` or `,`; a plain entry is the KB `default`.
    Named KBs must exist now (a typo should stop the start, not show up as one KB that never loads).
    """
    if not ("=" in value or "," in value) or _exists(Path(value)):
        return {DEFAULT_KB: Path(value)}
    kbs: dict[str, Path] = {}
    seen: dict[Path, str] = {}
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        name, sep, raw = entry.partition("=")
        name, raw = (name.strip(), raw.strip()) if sep else (DEFAULT_KB, entry)
        if not KB_NAME.fullmatch(name):
            raise ValueError(f"KB name {name!r}: use 1-32 of a-z, 0-9, _ and - (in {entry!r})")
        if name in kbs:
            raise ValueError(f"KB name {name!r} is given twice")
        path = Path(raw).expanduser()
        if not raw or not _exists(path):
            raise ValueError(f"KB {name!r}: {raw!r} does not exist")
        resolved = path.resolve()
        if resolved in seen:
            raise ValueError(f"KB {name!r}: {raw} is already the KB {seen[resolved]!r} (one path, one KB)")
        seen[resolved] = name
        kbs[name] = resolved
    if not kbs:
        raise ValueError("no KB given")
    return kbs


def _exists(path: Path) -> bool:
    """`path.exists()`, False for a name the OS refuses (200 KBs in one FAQBOT_KB is too long for a file name)."""
    try:
        return path.exists()
    except OSError:
        return False
