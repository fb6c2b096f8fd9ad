"""`faqbot soak`: a few seconds of real load through the real CLI; every acknowledged miss is found."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from admin.loadtest.soak import count_stored, soak
from bot.store import MissRecord, Store
from tests.conftest import ROOT, serve_app

pytestmark = pytest.mark.slow


def test_soak_command_starts_its_own_server_and_loses_nothing(tiny_kb: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "admin.cli", "soak", "--duration", "4", "--concurrency", "8", "--kb", str(tiny_kb),
         "--data-dir", str(tmp_path / "soak-var"), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["requests"] > 20 and report["errors"] == 0
    assert report["matched"] > 0 and report["misses"] > 0
    assert report["miss_ids"] == report["misses"] > 0
    assert report["stored"] == report["miss_ids"] and report["lost"] == 0
    assert 0 < report["p50_ms"] <= report["p99_ms"] <= report["max_ms"]
    store = Store(f"sqlite:///{tmp_path / 'soak-var' / 'faqbot.db'}")
    assert store.count_misses() >= report["stored"]
    store.close()


def test_soak_against_a_running_server_and_a_lost_miss_is_reported(make_settings, bundled_encoder,
                                                                    tmp_path: Path) -> None:
    from admin.web.app import build_app

    settings = make_settings(rate_limit_enabled=True, rate_limit_exempt_ips=[], rate_limit_chat_burst=5,
                             rate_limit_chat_per_minute=600)
    with serve_app(build_app(settings, encoder=bundled_encoder)) as base:
        report = soak(settings, url=base, duration=2.0, concurrency=4)
    assert report.errors == 0 and report.lost == 0 and report.miss_ids > 0
    assert report.rate_limited > 0  # the server's limits apply to a soak from outside, and are counted apart
    store = Store(settings.resolved_database_url)
    real = store.log_miss(MissRecord("x", "x", "web", None, "below_threshold", None, None, None, [], None))
    store.close()
    # An id the server claims but the database does not have is counted lost (as is one acknowledged twice).
    assert count_stored(settings.resolved_database_url, [real, 10**9]) == 1
    assert count_stored(settings.resolved_database_url, [real, real]) == 1


def _command_stderr(capsys: pytest.CaptureFixture) -> list[str]:
    """The command's own stderr lines (the in-process server's JSON log lines left out)."""
    return [line for line in capsys.readouterr().err.splitlines() if not line.startswith('{"ts"')]


def test_soak_pointed_at_another_database_says_where_it_looked(make_settings, bundled_encoder, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from admin.cli.main import main
    from admin.web.app import build_app

    for name in ("FAQBOT_DATABASE_URL", "FAQBOT_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings = make_settings()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    empty_db = tmp_path / "empty.db"
    empty_db.touch()
    with serve_app(build_app(settings, encoder=bundled_encoder)) as base:
        args = ["soak", "--url", base, "--duration", "1", "--concurrency", "2", "--kb", str(settings.kb)]
        capsys.readouterr()
        assert main([*args, "--data-dir", str(elsewhere)]) == 1
        [err] = _command_stderr(capsys)  # one line, no traceback
        assert err.startswith("faqbot: error: ")
        assert f"sqlite:///{elsewhere / 'faqbot.db'} (no such file)" in err
        assert "--database-url URL or --data-dir DIR" in err
        assert list(elsewhere.iterdir()) == []  # nothing created in the wrong place

        assert main([*args, "--database-url", f"sqlite:///{empty_db}"]) == 1
        [err] = _command_stderr(capsys)
        assert err.startswith("faqbot: error: ")
        assert f"sqlite:///{empty_db} (no misses table)" in err
        assert empty_db.stat().st_size == 0 and not Path(f"{empty_db}-wal").exists()  # looked at read-only

        # As the message says: pointed at the server's data dir, the same soak runs and finds every miss.
        assert main([*args, "--data-dir", str(settings.data_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["miss_ids"] > 0 and report["lost"] == 0
    assert report["database"] == f"sqlite:///{Path(settings.data_dir) / 'faqbot.db'}"


def test_a_soak_whose_misses_are_all_missing_asks_if_it_is_the_servers_database() -> None:
    from admin.loadtest.soak import SoakReport

    report = SoakReport(url="http://x", duration_seconds=1, concurrency=1, miss_ids=3, stored=0, lost=3,
                        database="sqlite:///var/faqbot.db")
    lines = report.lines()
    assert "3 miss ids acknowledged, 0 found in sqlite:///var/faqbot.db: 3 LOST" in lines[-2]
    assert "is it the server's database? (--database-url URL or --data-dir DIR)" in lines[-1]
    assert not any("server's database" in line
                   for line in SoakReport(url="x", duration_seconds=1, concurrency=1, miss_ids=3, stored=3,
                                          lost=0).lines())
