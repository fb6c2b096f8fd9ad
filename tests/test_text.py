"""The one sanitiser and the match key."""

from __future__ import annotations

import unicodedata

from index.text import MAX_ENCODED_CHARS, match_key, sanitize


def test_nfkc_first_then_cap() -> None:
    expanded = sanitize("\ufdfa" * 2000)
    assert len(expanded) == MAX_ENCODED_CHARS
    assert "\ufdfa" not in expanded  # normalised before anything else looks at it


def test_unencodable_control_and_format_characters_go() -> None:
    text = "a\ud800b\udfffc\x00d\x07e\u200bf\u202eg\ue000h"
    assert sanitize(text) == "abcdefgh"
    sanitize(text).encode("utf-8")  # never raises


def test_whitespace_is_folded_and_emoji_joiners_kept() -> None:
    assert sanitize("  你好\t\n 世界  ") == "你好 世界"
    family = "👨\u200d👩\u200d👧"
    assert sanitize(family) == family


def test_full_width_folds_to_half_width() -> None:
    assert sanitize("ＡＢＣ１２３？") == "ABC123?"


def test_sanitize_is_idempotent_on_hostile_strings() -> None:
    samples = ["\ufdfa" * 50, "\u0000" * 10, "e\u0301" * 100, "🇨🇳" * 30, "ﾃｽﾄ", "\u2126", "x" * 5000]
    for text in samples:
        once = sanitize(text)
        assert sanitize(once) == once
        assert unicodedata.is_normalized("NFKC", once)


def test_match_key_folds_case_width_space_and_trailing_punctuation() -> None:
    assert match_key("可以开发票吗？") == match_key("可以开发票吗") == match_key(" 可以 开发票吗?!  ")
    assert match_key("ＶＩＰ会员") == match_key("vip会员")
    assert match_key("退货?") != match_key("退款?")
