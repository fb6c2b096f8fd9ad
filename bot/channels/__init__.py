"""Messaging-platform webhooks (`POST /webhooks/<platform>`), each an adapter around `FaqService.achat`.

A channel is on when all its secrets are set (see docs/channels.md); every other
`/webhooks/<name>` answers 404 in the JSON error format. Every channel verifies its platform's own
signature, refuses stale and replayed requests, deduplicates retries by event id in the database,
and asks the same question /chat would (miss log with `channel=<platform>`).
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from bot.channels.base import Channel, ChannelContext
from bot.channels.dingtalk import DingTalkChannel
from bot.channels.events import EventLog
from bot.channels.feishu import FeishuChannel
from bot.channels.generic import GenericChannel
from bot.channels.sender import RetryPolicy, Sender
from bot.channels.slack import SlackChannel
from bot.channels.telegram import TelegramChannel
from bot.channels.wechat import WeChatChannel
from bot.channels.wecom import WeComChannel
from bot.errors import MethodNotAllowedError
from bot.service import FaqService
from bot.settings import Settings
from faq.errors import NotFoundError

CHANNEL_TYPES: tuple[type[Channel], ...] = (
    WeComChannel, WeChatChannel, DingTalkChannel, FeishuChannel, SlackChannel, TelegramChannel, GenericChannel,
)
PLATFORMS = tuple(c.name for c in CHANNEL_TYPES)

__all__ = ["CHANNEL_TYPES", "PLATFORMS", "enabled_channels", "install_channels"]


def enabled_channels(settings: Settings) -> list[str]:
    """Names of the channels whose secrets are all set."""
    return [c.name for c in CHANNEL_TYPES if c.enabled(settings)]


def install_channels(app: FastAPI) -> None:
    """Add the webhook routes of every enabled channel to `app` (a channel without secrets answers 404)."""
    settings: Settings = app.state.settings
    service: FaqService = app.state.service
    context = ChannelContext(
        settings=settings,
        service=service,
        metrics=app.state.metrics,
        events=EventLog(service.store, settings.webhook_event_ttl_seconds),
        sender=Sender(service.store, RetryPolicy(settings.outbound_timeout_seconds, settings.outbound_attempts,
                                                 settings.outbound_backoff_seconds)),
        kbs=getattr(app.state, "kbs", None),
    )
    channels = {cls.name: cls(context) for cls in CHANNEL_TYPES if cls.enabled(settings)}
    app.state.channels = channels
    app.state.channel_context = context
    for channel in channels.values():
        path = f"/webhooks/{channel.name}"
        app.add_api_route(path, channel.handle, methods=["POST"], tags=["webhooks"], summary=channel.summary,
                          name=f"webhook_{channel.name}")
        if channel.url_verification:
            app.add_api_route(path, channel.verify_url, methods=["GET"], tags=["webhooks"],
                              summary=f"{channel.name}: the platform console's URL verification",
                              name=f"webhook_{channel.name}_verify")

    async def channel_off(platform: str) -> None:
        """Any other platform name, or a channel whose secrets are not set."""
        if platform in channels:
            raise MethodNotAllowedError(f"the {platform} webhook takes POST")
        if platform in PLATFORMS:
            raise NotFoundError(f"the {platform} channel is not configured on this server", code="channel_disabled")
        raise NotFoundError(f"no channel named {platform!r}; channels: {', '.join(PLATFORMS)}", code="unknown_channel")

    app.add_api_route("/webhooks/{platform}", channel_off, methods=["GET", "POST"], include_in_schema=False)


async def drain_outbound(app: FastAPI, timeout: float = 10.0) -> int:
    """At shutdown, give replies still being delivered (Feishu, Slack) time to finish; returns how many did not."""
    context: ChannelContext | None = getattr(app.state, "channel_context", None)
    pending = set(context.background) if context else set()
    if not pending:
        return 0
    _done, not_done = await asyncio.wait(pending, timeout=timeout)
    for task in not_done:
        task.cancel()
    return len(not_done)
