"""`faqbot finetune` on a tiny BERT built here (no download, seconds): train, save, reload, gate, deploy.

The real figures (bundled base, BQ) are a command in docs/finetune.md, not a test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from admin.cli.main import main
from admin.finetune.data import (
    TrainingDataError,
    TrainRow,
    intent_groups,
    load_training_file,
    mnrl_batches,
    rows_for_loss,
)
from index.text import match_key

pytestmark = pytest.mark.slow


PAIRS = [
    {"query": "可以开票吗", "positive": "是否支持开具发票？"},
    {"query": "我想退货怎么操作", "positive": "怎么退货？"},
    {"query": "什么时候发货", "positive": "下单后多久发货？"},
    {"query": "密码忘了怎么办", "positive": "怎么修改登录密码？"},
    {"query": "积分可以抵现吗", "positive": "会员积分有什么用？"},
]
EVAL_QUERIES = [
    {"query": "你们的产品能开发票吗", "expected": "invoice"},
    {"query": "退货流程是什么", "expected": "return_howto"},
    {"query": "付款后几天能发出", "expected": "shipping_time"},
    {"query": "如何重置密码", "expected": "change_password"},
    {"query": "积分怎么使用", "expected": "member_points"},
    {"query": "可以开票吗", "expected": "invoice"},
    {"query": "我想退货怎么操作", "expected": "return_howto"},
    {"query": "什么时候发货", "expected": "shipping_time"},
    {"query": "密码忘了怎么办", "expected": "change_password"},
    {"query": "积分可以抵现吗", "expected": "member_points"},
]




def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _embed(model_dir: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu").encode(texts, prompt="q ", normalize_embeddings=True)


def _args(tiny_st_model: Path, tiny_kb: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["finetune", "--base", str(tiny_st_model), "--kb", str(tiny_kb), "--data-dir", str(tmp_path / "var"),
            "--threads", "1", *extra]


def test_tiny_finetune_runs_saves_reloads_and_changes_embeddings(tiny_st_model: Path, tiny_kb: Path,
                                                                  tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train = _jsonl(tmp_path / "train.jsonl", PAIRS)
    queries = _jsonl(tmp_path / "q.jsonl", EVAL_QUERIES)
    out = tmp_path / "tuned"
    code = main(_args(tiny_st_model, tiny_kb, tmp_path, "--train", str(train), "--out", str(out), "--max-steps", "1",
                      "--learning-rate", "1e-3", "--eval-kb", str(tiny_kb), "--eval-queries", str(queries)))
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "trained 1 step(s)" in printed
    texts = ["可以开票吗", "怎么退货？"]
    before, after = _embed(tiny_st_model, texts), _embed(out, texts)
    assert after.shape == before.shape
    assert not np.allclose(before, after, atol=1e-4)  # one step moved the weights
    np.testing.assert_allclose(_embed(out, texts), after, atol=1e-6)  # and the saved model reloads the same
    provenance = json.loads((out / "finetune.json").read_text(encoding="utf-8"))
    assert provenance["steps"] == 1 and provenance["loss"] == "mnrl"
    assert set(provenance["figures"]) == {"base", "fine-tuned"}
    report = (out / "report" / "report.md").read_text(encoding="utf-8")
    assert "| kb | overall accuracy at threshold |" in report
    assert (out / "report" / "faq_similarity_kb.png").stat().st_size > 1000
    assert (out / "report" / "faq_map_kb.png").stat().st_size > 1000
    assert not (tmp_path / "var" / "models" / "active.json").exists()  # no --deploy, nothing switched


def test_a_base_without_a_pooler_stays_without_one(tiny_st_model: Path, tiny_kb: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    """The bundled export has no pooler (`model_args: add_pooling_layer false`); the fine-tuned copy must keep
    saying so, or every load reports 'missing' pooler weights and initialises them at random."""
    import shutil

    from transformers import BertModel

    base = shutil.copytree(tiny_st_model, tmp_path / "no-pooler")
    BertModel.from_pretrained(str(base), add_pooling_layer=False).save_pretrained(base)
    config = json.loads((base / "sentence_bert_config.json").read_text(encoding="utf-8"))
    config["model_args"] = {"add_pooling_layer": False}  # as index/bundled_export.py writes it
    (base / "sentence_bert_config.json").write_text(json.dumps(config), encoding="utf-8")
    out = tmp_path / "tuned"
    code = main(_args(base, tiny_kb, tmp_path, "--train", str(_jsonl(tmp_path / "t.jsonl", PAIRS)), "--out", str(out),
                      "--max-steps", "1"))
    assert code == 0, capsys.readouterr().err
    saved = json.loads((out / "sentence_bert_config.json").read_text(encoding="utf-8"))
    assert saved["model_kwargs"] == {"add_pooling_layer": False}
    capsys.readouterr()
    _embed(out, ["可以开票吗"])
    assert "MISSING" not in capsys.readouterr().err


def _weights(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_base_weight_blends_the_trained_weights_back_toward_the_base(tiny_st_model: Path, tiny_kb: Path,
                                                                     tmp_path: Path) -> None:
    train = str(_jsonl(tmp_path / "t.jsonl", PAIRS))
    common = ["--train", train, "--max-steps", "2", "--learning-rate", "1e-2", "--symmetric"]
    assert main(_args(tiny_st_model, tiny_kb, tmp_path, *common, "--out", str(tmp_path / "plain"))) == 0
    assert main(_args(tiny_st_model, tiny_kb, tmp_path, *common, "--base-weight", "0.25",
                      "--out", str(tmp_path / "blended"))) == 0
    base, plain, blended = (_weights(d) for d in (tiny_st_model, tmp_path / "plain", tmp_path / "blended"))
    moved = 0
    for name, value in blended.items():
        np.testing.assert_allclose(value, 0.75 * plain[name] + 0.25 * base[name], atol=1e-6, err_msg=name)
        moved += not np.allclose(plain[name], base[name])
    assert moved > 10  # training did move the weights, so the blend is a real one


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--base-weight", "1", "--base-weight 1: give a fraction in [0, 1)"),
    ("--scale", "0", "--scale 0: give a positive number"),
])
def test_out_of_range_options_stop_before_training(tiny_st_model: Path, tiny_kb: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture, flag: str, value: str,
                                                   message: str) -> None:
    out = tmp_path / "tuned"
    code = main(_args(tiny_st_model, tiny_kb, tmp_path, "--train", str(_jsonl(tmp_path / "t.jsonl", PAIRS)),
                      flag, value, "--out", str(out)))
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("loss", ["mnrl", "cosent"])
def test_scale_reaches_the_loss_and_the_provenance(tiny_st_model: Path, tiny_kb: Path, tmp_path: Path, loss: str) -> None:
    from sentence_transformers import SentenceTransformer

    from admin.finetune.training import TrainConfig, loss_function

    model = SentenceTransformer(str(tiny_st_model), device="cpu")
    assert loss_function(model, TrainConfig(loss=loss, scale=50.0)).scale == 50.0
    assert loss_function(model, TrainConfig(loss=loss)).scale == 20.0  # sentence-transformers' default stays ours
    out = tmp_path / "tuned"
    assert main(_args(tiny_st_model, tiny_kb, tmp_path, "--train", str(_jsonl(tmp_path / "t.jsonl", PAIRS)),
                      "--loss", "mnrl", "--max-steps", "1", "--scale", "50", "--out", str(out))) == 0
    assert json.loads((out / "finetune.json").read_text(encoding="utf-8"))["config"]["scale"] == 50.0


def test_mnrl_only_options_say_they_are_ignored_for_cosent(tiny_st_model: Path, tiny_kb: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    tsv = tmp_path / "scored.tsv"
    tsv.write_text("可以开票吗\t是否支持开具发票？\t1\n可以开票吗\t怎么退货？\t0\n什么时候发货\t下单后多久发货？\t1\n",
                   encoding="utf-8")
    code = main(_args(tiny_st_model, tiny_kb, tmp_path, "--train", str(tsv), "--loss", "cosent", "--max-steps", "1",
                      "--mine-negatives", "--symmetric", "--out", str(tmp_path / "tuned")))
    err = capsys.readouterr().err
    assert code == 0, err
    assert "note: --mine-negatives applies to the mnrl loss only; ignored for cosent" in err
    assert "note: --symmetric applies to the mnrl loss only; ignored for cosent" in err
    assert "mining hard negatives" not in err


def test_mine_negatives_on_a_pair_file_without_faq_ids(tiny_st_model: Path, tiny_kb: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    tsv = tmp_path / "bq.tsv"
    tsv.write_text("".join(f"{p['query']}\t{p['positive']}\t1\n" for p in PAIRS), encoding="utf-8")
    out = tmp_path / "tuned"
    code = main(_args(tiny_st_model, tiny_kb, tmp_path, "--train", str(tsv), "--loss", "mnrl", "--mine-negatives", "--symmetric",
                      "--max-steps", "1", "--out", str(out)))
    err = capsys.readouterr().err
    assert code == 0, err
    assert "mining hard negatives: the training text of another intent" in err
    provenance = json.loads((out / "finetune.json").read_text(encoding="utf-8"))
    assert provenance["data"]["given a mined negative"] >= 1  # five intents: each has others below its partner
    assert provenance["config"]["symmetric"] is True


def test_gate_refuses_a_worse_model_and_keeps_the_encoder(tiny_st_model: Path, tiny_kb: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    # Teach the opposite of the KB: every question paired with another FAQ's, at a learning rate that wrecks it.
    wrong = [{"query": PAIRS[i]["query"], "positive": PAIRS[(i + 1) % len(PAIRS)]["positive"]} for i in range(len(PAIRS))]
    train = _jsonl(tmp_path / "wrong.jsonl", wrong)
    queries = _jsonl(tmp_path / "q.jsonl", EVAL_QUERIES)
    out = tmp_path / "worse"
    code = main(_args(tiny_st_model, tiny_kb, tmp_path, "--train", str(train), "--out", str(out), "--epochs", "30",
                      "--learning-rate", "5e-3", "--warmup-ratio", "0", "--eval-kb", str(tiny_kb),
                      "--eval-queries", str(queries), "--deploy"))
    printed = capsys.readouterr().out
    assert code == 3, printed
    assert "DROPPED" in printed and "deploy refused" in printed
    assert not (tmp_path / "var" / "models" / "active.json").exists()
    figures = json.loads((out / "finetune.json").read_text(encoding="utf-8"))["figures"]
    assert figures["fine-tuned"]["faq"]["kb"]["overall_accuracy"] < figures["base"]["faq"]["kb"]["overall_accuracy"]


def test_deploy_switches_the_encoder_rebuilds_the_index_and_undeploy_goes_back(
        tiny_st_model: Path, tiny_kb: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from bot.service import encoder_spec
    from bot.settings import Settings
    from index.faq_index import load_index

    train = _jsonl(tmp_path / "train.jsonl", PAIRS)
    queries = _jsonl(tmp_path / "q.jsonl", EVAL_QUERIES)
    out = tmp_path / "tuned"
    code = main(_args(tiny_st_model, tiny_kb, tmp_path, "--train", str(train), "--out", str(out), "--max-steps", "1",
                      "--learning-rate", "1e-7", "--eval-kb", str(tiny_kb), "--eval-queries", str(queries), "--deploy"))
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "deployed sentence-transformers:" in printed
    settings = Settings(kb=tiny_kb, data_dir=tmp_path / "var")
    record = json.loads((tmp_path / "var" / "models" / "active.json").read_text(encoding="utf-8"))
    assert record["encoder"] == f"sentence-transformers:{out.resolve()}"
    assert encoder_spec(settings).spec == record["encoder"]
    live = load_index(settings.data_dir)
    assert live.meta.fingerprint.startswith(record["encoder"])
    assert live.calibration.is_local  # recalibrated for the new model, kept across KB rebuilds
    # an explicitly configured encoder still wins over the deployed one
    assert encoder_spec(Settings(kb=tiny_kb, data_dir=tmp_path / "var", encoder=f"sentence-transformers:{tiny_st_model}")
                        ).spec == f"sentence-transformers:{tiny_st_model}"

    assert main(["finetune", "--undeploy", "--kb", str(tiny_kb), "--data-dir", str(tmp_path / "var")]) == 0
    assert encoder_spec(settings).spec == "bundled"
    assert load_index(settings.data_dir).meta.fingerprint.startswith("bundled:")


def test_ctrl_c_leaves_a_usable_checkpoint(tiny_st_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from admin.finetune import training as finetune

    config = finetune.TrainConfig(loss="mnrl", epochs=5, batch_size=4, threads=1, learning_rate=1e-3)
    model, query_prompt, kb_prompt = finetune.prepare_model(tiny_st_model, config, "query")
    rows = [TrainRow(p["query"], p["positive"], positive=True, group=str(i)) for i, p in enumerate(PAIRS)]
    real_loss = finetune.loss_function(model, config)
    calls = {"n": 0}

    def interrupting_loss(features: list, labels: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_loss(features, labels)

    monkeypatch.setattr(finetune, "loss_function", lambda model, config: interrupting_loss)
    with pytest.raises(finetune.TrainingInterruptedError) as caught:
        finetune.train(model, tiny_st_model, rows, tmp_path / "out", config, query_prompt, kb_prompt,
                       show_progress=False)
    checkpoint = caught.value.checkpoint
    assert checkpoint == tmp_path / "out" / "checkpoints" / "interrupted"
    vectors = _embed(checkpoint, ["可以开票吗"])
    assert vectors.shape == (1, 32) and np.isfinite(vectors).all()
    assert not np.allclose(vectors, _embed(tiny_st_model, ["可以开票吗"]), atol=1e-4)  # two steps were kept


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("keys.jsonl", '{"query": "可以开票吗", "positive": "开发票"}\n{"question": "a", "answer": "b"}\n',
     r"keys.jsonl:2: keys answer, question; expected"),
    ("blank.jsonl", '{"query": "可以开票吗", "positive": "开发票"}\n\n{"query": "a", "positive": "b"}\n',
     r"blank.jsonl:2: blank line"),
    ("json.jsonl", '{"query": "可以开票吗", "positive": "开发票"\n', r"json.jsonl:1: not valid JSON"),
    ("empty.jsonl", '{"query": "  ", "positive": "开发票"}\n', r"empty.jsonl:1: \"query\" is empty"),
    ("label.jsonl", '{"sentence_a": "a", "sentence_b": "b", "label": "yes"}\n', r"label.jsonl:1: label 'yes'"),
    ("fields.tsv", "可以开票吗\t开发票\t1\n可以开票吗\t开发票\n", r"fields.tsv:2: expected s1<TAB>s2<TAB>label, found 2"),
])
def test_bad_training_files_name_the_line(tmp_path: Path, name: str, content: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TrainingDataError, match=expected):
        load_training_file(path)


def test_non_utf8_file_names_the_line_and_the_cli_says_it_cleanly(tmp_path: Path, tiny_kb: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "gbk.tsv"
    path.write_bytes("可以开票吗\t开发票\t1\n".encode() + "退货\t怎么退货\t1\n".encode("gbk"))
    with pytest.raises(TrainingDataError, match=r"gbk.tsv:2: not UTF-8 \(byte 0x"):
        load_training_file(path)
    code = main(["finetune", "--train", str(path), "--kb", str(tiny_kb), "--data-dir", str(tmp_path / "var")])
    err = capsys.readouterr().err
    assert code == 1 and "gbk.tsv:2: not UTF-8" in err and "Traceback" not in err


def test_all_formats_load_and_bq_style_negatives_become_hard_negatives(tmp_path: Path) -> None:
    jsonl = _jsonl(tmp_path / "mixed.jsonl", [
        {"query": "可以开票吗", "positive": "是否支持开具发票？", "negative": "怎么退货？"},
        {"query": "什么时候发货", "positive": "下单后多久发货？"},
        {"sentence_a": "积分怎么使用", "sentence_b": "会员积分有什么用？", "label": 1},
    ])
    tsv = tmp_path / "bq.tsv"
    tsv.write_text("我想退货怎么操作\t怎么退货？\t1\n我想退货怎么操作\t退款多久到账\t0\n", encoding="utf-8")
    rows = load_training_file(jsonl) + load_training_file(tsv)
    assert [r.origin.rsplit("/", 1)[-1] for r in rows] == ["mixed.jsonl:1", "mixed.jsonl:2", "mixed.jsonl:3",
                                                            "bq.tsv:1", "bq.tsv:2"]
    mnrl = rows_for_loss(rows, "mnrl")
    assert len(mnrl) == 4 and all(r.positive for r in mnrl)
    assert next(r for r in mnrl if r.anchor == "我想退货怎么操作").negative == "退款多久到账"  # the label-0 partner
    scored = rows_for_loss(rows, "cosent")
    assert sorted(r.score for r in scored) == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]  # the triplet gave a 0 too


def test_mnrl_batches_never_put_one_intent_twice_in_a_batch() -> None:
    rows = [TrainRow(f"问题{i}", f"答案{i % 7}", positive=True) for i in range(60)]
    rows = intent_groups(rows)
    batches = mnrl_batches(rows, batch_size=8, seed=1)
    for batch in batches:
        groups = [r.group for r in batch]
        assert len(groups) == len(set(groups))
        texts = [match_key(t) for r in batch for t in (r.anchor, r.other)]
        assert len(texts) == len(set(texts))
    assert sum(len(b) for b in batches) == 60  # nothing lost: 7 intents fill batches of up to 7


def test_holdout_recalibrates_both_models_on_pairs_kept_out_of_training(tiny_st_model: Path, tiny_kb: Path,
                                                                         tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    from admin.finetune.data import holdout_split, training_texts

    lines = []
    for i in range(24):  # 24 intents, each: two wordings that match, one that does not
        lines += [f"怎么退货{i}\t如何退货{i}\t1\n", f"怎么退货{i}\t发票{i}\t0\n"]
    train = tmp_path / "bank" / "dev.tsv"
    train.parent.mkdir()
    train.write_text("".join(lines), encoding="utf-8")
    queries = _jsonl(tmp_path / "q.jsonl", EVAL_QUERIES)
    out = tmp_path / "tuned"
    # --calibrate-pairs with the training file itself: all dropped (warned), the held-out part is used instead
    code = main(_args(tiny_st_model, tiny_kb, tmp_path, "--train", str(train), "--out", str(out), "--max-steps", "1",
                      "--holdout", "0.25", "--calibrate-pairs", str(train), "--eval-kb", str(tiny_kb),
                      "--eval-queries", str(queries)))
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert "--calibrate-pairs bank/dev: 36 of 48 pairs share a text with the training data" in captured.err
    provenance = json.loads((out / "finetune.json").read_text(encoding="utf-8"))
    assert provenance["holdout"] == {"fraction": 0.25, "train_rows": 36, "heldout_rows": 12}
    assert provenance["calibration_pairs"] == {"bank/dev held out": 12, "bank/dev": 12}
    assert provenance["threshold_from"] == "bank/dev held out"
    # the same pairs calibrated both models, and their texts never reached training
    rows = load_training_file(train)
    kept, held = holdout_split(rows, 0.25, 20240607)
    assert not training_texts(kept) & training_texts(held)
    report = (out / "report" / "report.md").read_text(encoding="utf-8")
    assert ("Recalibrated on: bank/dev held out (12 pairs), bank/dev (12 pairs); threshold from bank/dev held out "
            "alone; 12 training examples held out") in report
    assert "threshold from bank/dev held out" in report  # the calibration source line says the same
    assert set(provenance["figures"]["base"]["pairs"]) == {"bank/dev held out"}  # reported as a dev figure too


def test_q4_deploy_of_a_model_the_engine_cannot_run_stops_before_training(
        tiny_st_model: Path, tiny_kb: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "tuned"
    code = main(_args(tiny_st_model, tiny_kb, tmp_path, "--train", str(_jsonl(tmp_path / "t.jsonl", PAIRS)),
                      "--eval-kb", str(tiny_kb), "--eval-queries", str(_jsonl(tmp_path / "q.jsonl", EVAL_QUERIES)),
                      "--deploy", "--q4", "--out", str(out)))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--q4: the bundled engine cannot serve a model fine-tuned from" in err and "hidden_size" in err
    assert not (out / "model.safetensors").exists()
