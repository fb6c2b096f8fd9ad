"""FAQ answers are written in Markdown; each platform gets what it can display.

- plain text (WeCom, WeChat, Feishu `text`, Telegram without parse_mode): markers removed,
  links kept readable as `text (url)`, list bullets as `•`;
- Slack mrkdwn: `*bold*`, `_italic_`, `~strike~`, `<url|text>`, with `& < >` escaped as Slack requires;
- DingTalk markdown: its supported subset (headings, bold, links, lists), hard line breaks made explicit.
Each platform also has a length limit; `truncate` cuts on characters or UTF-8 bytes.
"""

from __future__ import annotations

import re

# Line-anchored patterns use [ \t], not \s, so they never swallow the newlines around a line.
_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+(.*?)[ \t]*#*[ \t]*$", re.M)
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
# Star emphasis may sit inside CJK text (开具*电子*发票) but not between ASCII digits/letters (2*3*4).
_ITALIC_STAR = re.compile(r"(?<![A-Za-z0-9*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![A-Za-z0-9*])")
_ITALIC_UNDERSCORE = re.compile(r"(?<![\w_])_(?=\S)([^_\n]+?)(?<=\S)_(?![\w_])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_BULLET = re.compile(r"^([ \t]*)[-*+][ \t]+", re.M)
_QUOTE = re.compile(r"^[ \t]{0,3}>[ \t]?", re.M)
_RULE = re.compile(r"^[ \t]{0,3}([-*_])([ \t]*\1){2,}[ \t]*$", re.M)
_BLANK_RUNS = re.compile(r"\n{3,}")


def _link_text(text: str, url: str) -> str:
    return url if text.strip() in ("", url) else f"{text} ({url})"


def to_plain(markdown: str) -> str:
    """Readable plain text from Markdown (what WeCom, WeChat, Feishu text and Telegram show)."""
    text = _FENCE.sub(lambda m: m.group(1).rstrip("\n"), markdown.replace("\r\n", "\n"))
    text = _INLINE_CODE.sub(r"\1", text)
    text = _IMAGE.sub(lambda m: _link_text(m.group(1), m.group(2)), text)
    text = _LINK.sub(lambda m: _link_text(m.group(1), m.group(2)), text)
    text = _RULE.sub("", text)
    text = _HEADING.sub(r"\1", text)
    text = _BOLD.sub(r"\2", text)
    text = _STRIKE.sub(r"\1", text)
    text = _ITALIC_STAR.sub(r"\1", text)
    text = _ITALIC_UNDERSCORE.sub(r"\1", text)
    text = _BULLET.sub(r"\1• ", text)
    text = _QUOTE.sub("", text)
    return _BLANK_RUNS.sub("\n\n", text).strip()


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_slack(markdown: str) -> str:
    """Slack mrkdwn from Markdown."""
    text = _slack_escape(markdown.replace("\r\n", "\n"))
    text = _IMAGE.sub(lambda m: f"<{m.group(2)}|{m.group(1) or m.group(2)}>", text)
    text = _LINK.sub(lambda m: f"<{m.group(2)}|{m.group(1)}>", text)
    text = _RULE.sub("", text)
    # Bold becomes a placeholder first, so the italic pass does not see its stars.
    text = _HEADING.sub("\x00\\1\x00", text)
    text = _BOLD.sub("\x00\\2\x00", text)
    text = _ITALIC_STAR.sub(r"_\1_", text)
    text = text.replace("\x00", "*")
    text = _STRIKE.sub(r"~\1~", text)
    text = _BULLET.sub(r"\1• ", text)
    return _BLANK_RUNS.sub("\n\n", text).strip()


def to_dingtalk(markdown: str) -> str:
    """DingTalk markdown: its subset has no code blocks or rules, and needs explicit hard breaks."""
    text = _FENCE.sub(lambda m: m.group(1).rstrip("\n"), markdown.replace("\r\n", "\n"))
    text = _INLINE_CODE.sub(r"\1", text)
    text = _RULE.sub("", text)
    text = _STRIKE.sub(r"\1", text)
    text = _BLANK_RUNS.sub("\n\n", text).strip()
    return "\n".join(line + "  " if line.strip() else line for line in text.split("\n")).rstrip()


def title_of(markdown: str, limit: int = 20) -> str:
    """A short one-line title (DingTalk shows it in notifications)."""
    first = next((line for line in to_plain(markdown).splitlines() if line.strip()), "回复")
    return truncate(first.strip(), limit)


def truncate(text: str, limit: int, *, utf8_bytes: bool = False) -> str:
    """`text` cut to `limit` characters (or UTF-8 bytes), ending with an ellipsis when cut."""
    if not utf8_bytes:
        return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"
    if len(text.encode("utf-8")) <= limit:
        return text
    budget = limit - len("…".encode())
    cut = text.encode("utf-8")[:max(budget, 0)].decode("utf-8", "ignore")
    return cut + "…"
