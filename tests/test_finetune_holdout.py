"""Held-out calibration for `faqbot finetune`: the grouped split and the calibration-overlap guard.

Pure data handling (no model), so these stay in the quick suite; the end-to-end run with `--holdout`
is in tests/test_finetune.py (slow).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from admin.errors import UsageError
from admin.finetune.data import (
    TrainingDataError,
    TrainRow,
    drop_seen,
    has_labelled_pairs,
    holdout_split,
    labelled_pairs,
    training_texts,
)
from admin.finetune.run import Validation, calibration_sets, eval_sets, holdout_fraction
from admin.quality.evaluation import LabelledPair
from index.text import match_key


def _bank_rows(n_intents: int = 40) -> list[TrainRow]:
    """BQ-shaped rows: each intent has 3 wordings joined by label-1 pairs, and label-0 pairs link
    neighbouring intents in twos (so some connected components span two intents)."""
    rows = []
    for i in range(n_intents):
        a, b, c = f"怎么还款{i}", f"如何还款{i}？", f"还款方式{i}"
        rows += [TrainRow(a, b, score=1.0, origin=f"f:{i}a"), TrainRow(b, c, score=1.0, origin=f"f:{i}b")]
        if i % 2:
            rows.append(TrainRow(a, f"怎么借款{i - 1}", score=0.0, origin=f"f:{i}c"))
        else:
            rows.append(TrainRow(c, f"额度{i}", score=0.0, origin=f"f:{i}c"))
    # the same text written differently (full-width, case, trailing punctuation) must count as the same text
    rows.append(TrainRow("ＡＢＣ还款0", "怎么还款0。", score=1.0, origin="f:variant"))
    return rows


def test_holdout_split_shares_no_text_keeps_every_row_and_is_deterministic() -> None:
    rows = _bank_rows()
    train, heldout = holdout_split(rows, 0.2, seed=7)
    assert not training_texts(train) & training_texts(heldout)  # no text (after match_key) on both sides
    assert sorted(r.origin for r in train + heldout) == sorted(r.origin for r in rows)  # nothing lost
    assert 0.1 * len(rows) <= len(heldout) <= 0.3 * len(rows)
    assert [r.origin for r in train] == [r.origin for r in rows if r in train]  # file order kept
    assert holdout_split(rows, 0.2, seed=7) == (train, heldout)  # same seed, same split
    assert holdout_split(rows, 0.2, seed=8)[1] != heldout
    # the variant row joins intent 0 through "怎么还款0。" == "怎么还款0": both sides of it stay together
    variant = next(r for r in rows if r.origin == "f:variant")
    same_side = train if variant in train else heldout
    assert any(r.origin == "f:0a" for r in same_side)


def test_holdout_split_rejects_a_bad_fraction() -> None:
    with pytest.raises(TrainingDataError, match="between 0 and 1"):
        holdout_split(_bank_rows(), 1.5, seed=1)


def test_labelled_pairs_and_the_default_fraction() -> None:
    rows = [TrainRow("a", "b", positive=True, negative="c"), TrainRow("d", "e", score=0.0),
            TrainRow("f", "g", score=1.0)]
    assert labelled_pairs(rows) == [LabelledPair("a", "b", 1.0), LabelledPair("a", "c", 0.0),
                                    LabelledPair("d", "e", 0.0), LabelledPair("f", "g", 1.0)]
    graded = [TrainRow("a", "b", score=4.6), TrainRow("c", "d", score=2.5), TrainRow("e", "f", score=0.4)]
    assert [p.label for p in labelled_pairs(graded)] == [1.0, 0.0]  # the uncertain middle is left out
    assert has_labelled_pairs(rows) and not has_labelled_pairs([TrainRow("a", "b", positive=True)])

    args = Validation()
    assert holdout_fraction(args, rows, validating=True) == 0.2
    assert holdout_fraction(args, rows, validating=False) == 0.0  # nothing would read the held-out part
    assert holdout_fraction(args, [TrainRow("a", "b", positive=True)], validating=True) == 0.0  # no 0/1 pairs
    assert holdout_fraction(Validation(calibrate_pairs=(Path("x.tsv"),)), rows, True) == 0.0
    assert holdout_fraction(Validation(holdout=0.3, calibrate_pairs=(Path("x.tsv"),)), rows, True) == 0.3
    with pytest.raises(UsageError, match="--holdout keeps pairs"):
        holdout_fraction(Validation(holdout=0.3), rows, validating=False)


def _tsv(path: Path, pairs: list[tuple[str, str, int]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{a}\t{b}\t{label}\n" for a, b, label in pairs), encoding="utf-8")
    return path


def test_calibrate_pairs_that_overlap_the_training_data_are_dropped_with_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train = [TrainRow("怎么还款", "如何还款", score=1.0), TrainRow("怎么还款", "额度多少", score=0.0)]
    mixed = _tsv(tmp_path / "bank" / "dev.tsv", [
        ("怎么还款？", "还款日是哪天", 1),  # shares 怎么还款 (spelled with a ？) with training: dropped
        ("额度多少", "额度怎么提高", 0),  # shares 额度多少: dropped
        ("开发票", "能开票吗", 1), ("开发票", "退货", 0),
    ])
    sets = calibration_sets(Validation(calibrate_pairs=(mixed,)), train, [], "unused")
    assert sets is not None and sets.threshold_sets is None  # no held-out part: the threshold reads every file
    assert sets.sets == {"bank/dev": [LabelledPair("开发票", "能开票吗", 1.0), LabelledPair("开发票", "退货", 0.0)]}
    err = capsys.readouterr().err
    assert "--calibrate-pairs bank/dev: 2 of 4 pairs share a text with the training data; dropped" in err

    # a calibration file that IS the training data leaves nothing: a clear error, not a silent KB fallback
    same = _tsv(tmp_path / "bank" / "train.tsv", [("怎么还款", "如何还款", 1), ("怎么还款", "额度多少", 0)])
    with pytest.raises(UsageError, match=r"every pair shares a text with the training data.*--holdout"):
        calibration_sets(Validation(calibrate_pairs=(same,)), train, [], "unused")

    # the held-out part is used as it is, next to the (cleaned) files
    heldout = [TrainRow("开户", "怎么开户", score=1.0), TrainRow("开户", "销户", score=0.0)]
    sets = calibration_sets(Validation(calibrate_pairs=(same, mixed)), train, heldout, "bank/train held out")
    assert sets is not None and list(sets.sets) == ["bank/train held out", "bank/dev"]
    assert sets.sets["bank/train held out"] == [LabelledPair("开户", "怎么开户", 1.0), LabelledPair("开户", "销户", 0.0)]
    # the percent map reads both; the threshold only the team's own held-out pairs
    assert sets.threshold_sets == {"bank/train held out": sets.sets["bank/train held out"]}

    # held-out pairs of one label cannot place a threshold: it reads every set then
    positives_only = [TrainRow("开户", "怎么开户", score=1.0)]
    sets = calibration_sets(Validation(calibrate_pairs=(mixed,)), train, positives_only, "held out")
    assert sets is not None and sets.threshold_sets is None


def test_drop_seen_compares_normalised_texts() -> None:
    pairs = [LabelledPair("Ｈｅｌｌｏ 还款。", "x", 1.0), LabelledPair("y", "z", 0.0)]
    kept, dropped = drop_seen(pairs, {match_key("hello还款")})
    assert kept == [LabelledPair("y", "z", 0.0)] and dropped == 1


def test_gate_on_names_the_sets_that_gate_and_the_others_are_watched(tmp_path: Path) -> None:
    import json

    kbs = []
    for name in ("bank", "general"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "kb.yaml").write_text("version: 1\nfaqs:\n  - id: a\n    question: 怎么还款\n    answer: 在app里还款\n",
                                        encoding="utf-8")
        (folder / "q.jsonl").write_text(json.dumps({"query": "如何还款", "expected": "a"}, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
        kbs.append(folder)
    args = Validation(eval_kbs=tuple(k / "kb.yaml" for k in kbs), eval_queries=tuple(k / "q.jsonl" for k in kbs))
    assert [(s.name, s.role) for s in eval_sets(args)[0]] == [("bank", "gate"), ("general", "gate")]
    args = replace(args, gate_on=("bank",))
    assert [(s.name, s.role) for s in eval_sets(args)[0]] == [("bank", "gate"), ("general", "watch")]
    args = replace(args, gate_on=("bq",))
    with pytest.raises(UsageError, match=r"--gate-on bq: not an --eval-kb set \(they are: bank, general\)"):
        eval_sets(args)
