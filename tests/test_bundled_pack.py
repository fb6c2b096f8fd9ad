"""Packing a model back into the bundled engine's 4-bit file (`faqbot model pack-bundled`, `finetune --q4`).

The quick tests work on tensors of the shipped file; the slow ones pack whole models and load them
in the real engine.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from index.bundled_export import Q4_BLOCK, QK, BundledFile, bundled_model_path, dequantize_q4_0, read_bundled
from index.bundled_pack import PackError, check_engine_file, gptq_q4_0, quantize_q4_0


@pytest.fixture(scope="module")
def shipped() -> BundledFile:
    return read_bundled()


def test_rounding_the_shipped_weights_gives_the_shipped_bytes_back(shipped: BundledFile) -> None:
    entry = shipped.tensors["l0.fi.w"]
    original = shipped.data[entry.offset : entry.offset + entry.nbytes]
    weights = shipped.q4("l0.fi.w", 1536, 384)
    assert quantize_q4_0(weights, shipped.q4_scales("l0.fi.w")).tobytes() == original
    assert quantize_q4_0(weights).tobytes() == original  # the shipped scales are among our own candidates too
    moments = np.eye(384) + 0.5  # any positive definite input statistics
    assert gptq_q4_0(weights, moments, shipped.q4_scales("l0.fi.w")).tobytes() == original


def _correlated_inputs(rng: np.random.Generator, basis: np.ndarray, n: int) -> np.ndarray:
    """Token activations live near a low-dimensional subspace (`basis`), as a transformer's do."""
    return rng.normal(size=(n, len(basis))) @ basis + 0.1 * rng.normal(size=(n, basis.shape[1]))


def test_gptq_keeps_a_change_smaller_than_a_4bit_step_that_rounding_loses(shipped: BundledFile) -> None:
    rng = np.random.default_rng(7)
    weights = shipped.q4("l0.q.w", 384, 384)
    steps = np.repeat(np.abs(shipped.q4_scales("l0.q.w")), QK).reshape(384, 384)
    change = (0.3 * steps * rng.normal(size=steps.shape)).astype(np.float32)  # a fine-tune: mostly < half a step
    tuned = weights + change
    basis = rng.normal(size=(16, 384))
    inputs = _correlated_inputs(rng, basis, 2000)
    moments = inputs.T @ inputs
    held_out = _correlated_inputs(rng, basis, 500)  # other tokens from the same distribution

    def output_error(blocks: np.ndarray) -> float:
        packed = dequantize_q4_0(blocks.tobytes(), 0, 384, 384)
        return float(np.linalg.norm((packed - tuned) @ held_out.T) / np.linalg.norm(change @ held_out.T))

    nearest = output_error(quantize_q4_0(tuned, shipped.q4_scales("l0.q.w")))
    gptq = output_error(gptq_q4_0(tuned, moments, shipped.q4_scales("l0.q.w")))
    assert nearest > 0.6  # rounding to nearest loses most of the change
    assert gptq < 0.35 and gptq < nearest / 2


def test_q4_blocks_are_the_engine_layout() -> None:
    weights = np.concatenate([np.arange(-8, 8), np.arange(7, -9, -1)]).astype(np.float32)[None, :]  # one block
    block = quantize_q4_0(weights)
    assert block.dtype == Q4_BLOCK and block.itemsize == 18
    assert float(block["d"][0]) == 1.0  # peak -8 / -8: every weight is a level
    assert block["qs"][0][0] == (0 | (15 << 4))  # weight 0 (-8 -> nibble 0) low, weight 16 (7 -> nibble 15) high
    np.testing.assert_array_equal(dequantize_q4_0(block.tobytes(), 0, 1, QK), weights)


@pytest.mark.parametrize("damage", ["truncated", "bad magic"])
def test_a_damaged_engine_file_is_refused_before_the_engine_reads_it(tmp_path: Path, damage: str) -> None:
    from index.encoders import BundledEncoder, EncoderError

    data = bundled_model_path().read_bytes()
    broken = tmp_path / "model-q4.bin"
    broken.write_bytes(data[: len(data) - 1000] if damage == "truncated" else b"GGUF" + data[4:])
    with pytest.raises(PackError):
        check_engine_file(broken)
    with pytest.raises(EncoderError, match="not a usable model file"):
        BundledEncoder(model_file=broken)  # the engine would crash on it; we refuse it in Python first
    with pytest.raises(EncoderError, match=r"missing\.bin: not a usable model file"):
        BundledEncoder(model_file=tmp_path / "missing.bin")


# --------------------------------------------------------------------------- whole models (slow)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from index.bundled_export import export_bundled

    return export_bundled(tmp_path_factory.mktemp("pack") / "bundled", progress=False)


def _texts() -> list[str]:
    from faq import load_kb

    return [text for _faq_id, text in load_kb(Path(__file__).parents[1] / "faq" / "sample").texts()]


@pytest.mark.slow
def test_packing_the_export_rebuilds_the_shipped_model(export_dir: Path, tmp_path: Path, shipped: BundledFile,
                                                       capsys: pytest.CaptureFixture) -> None:
    import re

    from admin.cli.main import main
    from index.encoders import BundledEncoder, EncoderSpec, load_encoder

    packed = tmp_path / "model-q4.bin"
    assert main(["model", "pack-bundled", "--model", str(export_dir), "--out", str(packed), "--check-texts", "40",
                 "--round-to-nearest", "--threads", "1"]) == 0
    agreement = re.search(r"cosine agreement with .* over 40 KB texts: mean ([0-9.]+)", capsys.readouterr().out)
    assert agreement and float(agreement.group(1)) >= 0.9999
    again = read_bundled(packed)
    for name, entry in shipped.tensors.items():
        mine = again.tensors[name]
        assert again.data[mine.offset : mine.offset + mine.nbytes] == shipped.data[entry.offset : entry.offset + entry.nbytes], name
    served = load_encoder(EncoderSpec(spec=f"bundled:{packed}"))
    texts = _texts()[:40]
    np.testing.assert_allclose(served.encode_queries(texts), BundledEncoder().encode_queries(texts), atol=1e-6)
    assert served.fingerprint.startswith(f"bundled:{packed.resolve()}:") and served.fingerprint != BundledEncoder().fingerprint


def _simulated_finetune(export_dir: Path, out: Path) -> Path:
    """The export with every encoder weight matrix moved by a fraction of a 4-bit step (what training does)."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(export_dir, out)
    weights = load_file(str(export_dir / "model.safetensors"))
    rng = np.random.default_rng(3)
    for name, value in weights.items():
        if name.startswith("encoder.") and value.ndim == 2:
            step = np.abs(value).reshape(-1, QK).max(axis=1).repeat(QK).reshape(value.shape) / 8
            weights[name] = (value + 0.4 * step * rng.normal(size=value.shape)).astype(np.float32)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.mark.slow
def test_a_packed_finetune_follows_the_float_model(export_dir: Path, tmp_path: Path) -> None:
    from index.bundled_pack import cosine_agreement, pack_bundled

    tuned = _simulated_finetune(export_dir, tmp_path / "tuned")
    texts = _texts()
    calibration, check = texts[::2], texts[1::2]
    nearest = cosine_agreement(tuned, pack_bundled(tuned, tmp_path / "nearest.bin", progress=False), check)
    gptq = cosine_agreement(tuned, pack_bundled(tuned, tmp_path / "gptq.bin", calibration, progress=False), check)
    assert gptq["mean"] > nearest["mean"]
    assert gptq["mean"] > 0.97 and gptq["min"] > 0.9


@pytest.mark.slow
def test_pack_refuses_a_model_the_engine_cannot_run(tiny_st_model: Path, export_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    import json

    from admin.cli.main import main
    from index.bundled_pack import pack_bundled

    with pytest.raises(PackError, match="not the bundled model's shape"):
        pack_bundled(tiny_st_model, tmp_path / "x.bin", progress=False)
    assert main(["model", "pack-bundled", "--model", str(tiny_st_model), "--out", str(tmp_path / "x.bin")]) == 1
    assert "faqbot: error: " in capsys.readouterr().err and not (tmp_path / "x.bin").exists()
    cls_pooled = tmp_path / "cls"
    shutil.copytree(export_dir, cls_pooled)
    config = json.loads((cls_pooled / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
    config.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    (cls_pooled / "1_Pooling" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(PackError, match="pools by the mean"):
        pack_bundled(cls_pooled, tmp_path / "x.bin", progress=False)
    assert not (tmp_path / "x.bin").exists()


@pytest.mark.slow
def test_finetune_deploy_q4_serves_the_packed_model_on_the_engine(export_dir: Path, tiny_kb: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    import json

    from admin.cli.main import main
    from bot.service import encoder_spec
    from bot.settings import Settings
    from index.encoders import load_encoder
    from index.faq_index import load_index

    pairs = [("可以开票吗", "是否支持开具发票？"), ("我想退货怎么操作", "怎么退货？"), ("什么时候发货", "下单后多久发货？")]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"query": q, "positive": p}, ensure_ascii=False) + "\n" for q, p in pairs),
                     encoding="utf-8")
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps({"query": q, "expected": e}, ensure_ascii=False) + "\n" for q, e in
                               [("你们能开发票吗", "invoice"), ("退货流程是什么", "return_howto")]), encoding="utf-8")
    out, data_dir = tmp_path / "tuned", tmp_path / "var"
    code = main(["finetune", "--base", str(export_dir), "--kb", str(tiny_kb), "--data-dir", str(data_dir),
                 "--train", str(train), "--max-steps", "1", "--learning-rate", "1e-7", "--eval-kb", str(tiny_kb),
                 "--eval-queries", str(queries), "--deploy", "--q4", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    packed = (out / "model-q4.bin").resolve()
    record = json.loads((data_dir / "models" / "active.json").read_text(encoding="utf-8"))
    assert record["encoder"] == f"bundled:{packed}"
    settings = Settings(kb=tiny_kb, data_dir=data_dir)
    encoder = load_encoder(encoder_spec(settings))
    assert encoder.name == f"bundled:{packed}"
    live = load_index(data_dir)
    assert live.meta.fingerprint == encoder.fingerprint
    assert live.calibration.is_local  # recalibrated for the packed model
