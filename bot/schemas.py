"""Request bodies of the public HTTP API (their docstrings and field descriptions become /docs)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_BATCH = 256


class StrictBody(BaseModel):
    # Unknown fields are ignored (forward compatible), but no silent type coercion (123 is not a message).
    model_config = ConfigDict(strict=True)


class ChatRequest(StrictBody):
    """One customer message."""

    message: str = Field(..., description="The customer's question.")
    session_id: str | None = Field(None, max_length=128, description="Conversation id (the widget keeps one per browser tab).")
    channel: str = Field("web", min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$", description="Where it came from.")
    tags: list[str] | None = Field(None, max_length=32, description="Only consider FAQs with one of these tags.")
    top_k: int | None = Field(None, ge=1, le=20, description="How many alternatives to return.")
    kb: str | None = Field(None, max_length=64, description="Which knowledge base to ask (`--kb NAME=PATH`); none: the first.")


class FeedbackRequest(StrictBody):
    """A thumbs-up or thumbs-down on an answer; a thumbs-down is logged as a miss for review."""

    message: str = Field(..., description="The question that was answered.")
    faq_id: str | None = Field(None, max_length=64, description="The FAQ the bot answered with (null if none).")
    helpful: bool = Field(..., description="true = 👍, false = 👎.")
    session_id: str | None = Field(None, max_length=128)
    channel: str = Field("web", min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")
    kb: str | None = Field(None, max_length=64, description="Which knowledge base to ask (`--kb NAME=PATH`); none: the first.")


class SimilarityRequest(StrictBody):
    """Either one pair (`sentence_a`, `sentence_b`) or a batch (`pairs`)."""

    sentence_a: str | None = None
    sentence_b: str | None = None
    pairs: list[Annotated[list[str], Field(min_length=2, max_length=2)]] | None = Field(None, max_length=MAX_BATCH, description=f"Up to {MAX_BATCH} [a, b] pairs.")


class EmbeddingsRequest(StrictBody):
    """OpenAI-compatible embeddings request."""

    input: str | list[str] = Field(..., description="A text or a list of texts.")
    model: str | None = Field(None, description="Ignored: the configured encoder is used.")
    input_type: Literal["query", "passage"] = Field("query", description="Which prefix/prompt to encode with.")
    encoding_format: Literal["float"] = "float"
