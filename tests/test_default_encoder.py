"""The default `auto` encoder: the bundled weights as ONNX int8, exported once on first start, else bundled.

What a team sees on `make run`: the first start exports (once, whichever worker gets the lock), every
later start and every other worker loads the file, answers come with the shipped calibration, and
anything that stops the export leaves a working bot on the bundled engine.
"""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.conftest import faqbot_serve

EXPORTING = "first start: exporting the bundled model to ONNX int8"
SERVING_ONNX = "serving the bundled model as ONNX int8"


def _chat(base: str, message: str) -> dict:
    response = httpx.post(base + "/chat", json={"message": message}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
def test_first_start_exports_once_and_every_worker_serves_the_calibrated_int8_model(tmp_path: Path, tiny_kb: Path):
    from index.calibration import shipped_calibration
    from index.default_model import int8_path
    from index.faq_index import load_index

    data_dir = tmp_path / "var"
    env = {"FAQBOT_ENCODER": "auto"}
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    with ExitStack() as stack, ThreadPoolExecutor(2) as pool:
        # two servers start at the same moment on one data dir, as two workers or replicas would
        servers = list(pool.map(lambda log: stack.enter_context(
            faqbot_serve(tiny_kb, data_dir, env=env, log_file=log, ready_seconds=400)), logs))
        answers = [_chat(base, "发票可以开吗") for base, _ in servers]
        off_topic = _chat(servers[0][0], "今天天气怎么样")

    texts = [log.read_text(encoding="utf-8") for log in logs]
    assert sum(EXPORTING in text for text in texts) == 1, texts  # one exported, the other waited for it
    assert all(SERVING_ONNX in text for text in texts), texts

    model = int8_path(data_dir / "models")
    assert model.is_file() and not model.with_name("model.onnx").exists()  # the fp32 intermediate is gone
    index = load_index(data_dir)
    assert index.meta.fingerprint.startswith("onnx:") and index.meta.encoder_name == f"onnx:{model}"
    shipped = shipped_calibration(index.meta.fingerprint)
    assert shipped is not None and index.calibration.scope == "shipped"  # the verified bytes, calibrated

    for answer in answers:
        assert answer["matched"] and answer["faq_id"] == "invoice"
        assert shipped.confidence is not None and answer["threshold"] is None
        assert answer["min_confidence"] == shipped.confidence.min_confidence <= answer["confidence"]
    assert answers[0]["similarity"] == answers[1]["similarity"]  # same model, same vector in both workers
    assert not off_topic["matched"]

    # a restart finds the file: no second export, same answer
    with faqbot_serve(tiny_kb, data_dir, env=env, log_file=tmp_path / "restart.log") as (base, _):
        again = _chat(base, "发票可以开吗")
    restart_log = (tmp_path / "restart.log").read_text(encoding="utf-8")
    assert EXPORTING not in restart_log and SERVING_ONNX in restart_log
    assert again["similarity"] == answers[0]["similarity"]


def test_auto_serves_the_bundled_engine_when_the_export_cannot_run(tmp_path: Path, caplog):
    from index.encoders import BundledEncoder, EncoderSpec, load_encoder

    blocked = tmp_path / "models"
    blocked.write_text("a file where the models directory should be", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="faqbot.encoder"):
        encoder = load_encoder(EncoderSpec("auto", models_dir=str(blocked)))
    assert isinstance(encoder, BundledEncoder)
    assert "serving the bundled engine" in caplog.text and str(blocked) in caplog.text
    assert encoder.encode_queries(["可以开发票吗"]).shape == (1, encoder.dim)


@pytest.mark.slow
def test_auto_reports_a_failed_export_and_serves_the_bundled_engine(tmp_path: Path, caplog):
    from index.encoders import BundledEncoder, EncoderSpec, load_encoder

    models = tmp_path / "models"
    models.mkdir()
    (models / "bundled").write_text("not a model directory", encoding="utf-8")  # the export cannot land here
    with caplog.at_level(logging.WARNING, logger="faqbot.encoder"):
        encoder = load_encoder(EncoderSpec("auto", models_dir=str(models)))
    assert isinstance(encoder, BundledEncoder)
    assert "the ONNX export failed: exit 1: " in caplog.text  # the child's own error, not a hang or a crash
    assert not (models / "bundled" / "onnx").exists()


@pytest.mark.slow
def test_auto_refuses_an_int8_file_nobody_calibrated(tmp_path: Path, tiny_st_model: Path, caplog):
    """A different export (e.g. after a library upgrade) is not the verified one: bundled, with the reason."""
    from index.encoders import BundledEncoder, EncoderSpec, load_encoder
    from index.onnx_export import export_onnx

    models = tmp_path / "models"
    other = shutil.copytree(tiny_st_model, models / "bundled")
    export_onnx(other, int8=True)
    with caplog.at_level(logging.WARNING, logger="faqbot.encoder"):
        encoder = load_encoder(EncoderSpec("auto", models_dir=str(models)))
    assert isinstance(encoder, BundledEncoder)
    assert "is not the verified export" in caplog.text and "FAQBOT_ENCODER=onnx:" in caplog.text
