"""The README tells the truth: its settings table is the Settings class; its two commands exist."""

from __future__ import annotations

import re

from admin.cli.core import settings_markdown
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_settings_table_matches_the_settings_class() -> None:
    match = re.search(r"<!-- settings:start[^>]*-->\n(.*?)\n<!-- settings:end -->", README, re.S)
    assert match, "README.md lost its settings markers"
    assert match.group(1).strip() == settings_markdown().strip(), (
        "README settings table is out of date: regenerate with `faqbot settings --markdown`"
    )


def test_the_two_commands_and_ci() -> None:
    assert "make run" in README and "make test" in README
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "torch==2.13.0" in makefile and "torch==2.13.0" in (ROOT / "constraints.txt").read_text()
