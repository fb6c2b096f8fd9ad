"""Training data that needs no model: hard negatives mined from pair files without FAQ ids
(`--mine-negatives` on BQ-style TSV) and MNRL batching.

The mining encoder is a fixed table of unit vectors, so which text is "closest" is known exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from admin.finetune.data import TrainRow, intent_groups, mine_pair_negatives, mnrl_batches, rows_for_loss
from index.text import match_key

# Cosine to "怎么退货" (the anchor below), by construction.
SIMILARITY = {
    "怎么退货": 1.0,
    "退货流程是什么": 0.90,  # its partner
    "退货运费谁出": 0.95,  # another intent, scored *above* the partner: likely an unlabelled paraphrase
    "退款多久到账": 0.85,  # another intent, below the partner: the hard negative
    "发票怎么开": 0.30,
    "可以开发票吗": 0.28,
    "怎样退货": 0.97,  # same intent as the anchor (joined by a positive pair): never a negative
    "退货要怎么弄": 0.88,  # same intent via 怎样退货, and closer than 退款多久到账: still never a negative
}


def _vector(text: str) -> np.ndarray:
    """A unit vector whose cosine to the anchor's vector [1, 0, 0] is SIMILARITY[text]."""
    cos = SIMILARITY[text]
    spread = float(np.sqrt(1.0 - cos * cos))
    # texts other than the anchor lie on different directions of the orthogonal plane
    angle = (sum(map(ord, text)) % 360) / 180 * np.pi
    return np.array([cos, spread * np.cos(angle), spread * np.sin(angle)])


def _encode(texts: Sequence[str]) -> np.ndarray:
    return np.stack([_vector(t) for t in texts])


def _rows() -> list[TrainRow]:
    return intent_groups([
        TrainRow("怎么退货", "退货流程是什么", score=1.0, origin="bq.tsv:1"),
        TrainRow("怎么退货", "怎样退货", score=1.0, origin="bq.tsv:2"),
        TrainRow("怎样退货", "退货要怎么弄", score=1.0, origin="bq.tsv:6"),
        TrainRow("退货运费谁出", "发票怎么开", score=0.0, origin="bq.tsv:3"),
        TrainRow("退款多久到账", "可以开发票吗", score=0.0, origin="bq.tsv:4"),
        TrainRow("发票怎么开", "可以开发票吗", score=1.0, origin="bq.tsv:5"),
    ])


def test_the_closest_other_intent_below_the_partner_becomes_the_negative() -> None:
    mined = mine_pair_negatives(_rows(), _encode)
    first = mined[0]
    # not 退货运费谁出 (above the partner), not 退货要怎么弄 (same intent): the next closest
    assert first.negative == "退款多久到账"
    assert all(m.negative is None for m in mined[3:5])  # label-0 rows are not given negatives


INTENTS = [{"怎么退货", "退货流程是什么", "怎样退货", "退货要怎么弄"}, {"发票怎么开", "可以开发票吗"}]


def test_every_mined_negative_is_another_intent_scored_below_the_partner() -> None:
    mined = mine_pair_negatives(_rows(), _encode)
    assert sum(r.negative is not None for r in mined) >= 2
    for row in mined:
        if row.negative is None:
            continue
        anchor, partner, negative = _encode([row.anchor, row.other, row.negative])
        assert negative @ anchor < partner @ anchor
        assert not any({row.anchor, row.negative} <= intent for intent in INTENTS)


def test_a_negative_already_given_is_kept_and_mined_ones_win_over_label0_partners() -> None:
    rows = _rows()
    rows[1] = TrainRow("怎么退货", "怎样退货", positive=True, negative="发票怎么开", group=rows[1].group)
    mined = mine_pair_negatives(rows, _encode)
    assert mined[1].negative == "发票怎么开"  # a triplet's own negative stays
    for_loss = rows_for_loss(mined, "mnrl")
    by_pair = {(r.anchor, r.other): r.negative for r in for_loss}
    assert by_pair[("怎么退货", "退货流程是什么")] == "退款多久到账"  # mined, not a label-0 partner
    without_mining = {(r.anchor, r.other): r.negative for r in rows_for_loss(rows, "mnrl")}
    assert without_mining[("发票怎么开", "可以开发票吗")] in {"退货运费谁出", "退款多久到账"}  # label-0 partner


def test_one_big_intent_does_not_shrink_the_batches() -> None:
    # BQ-like: 600 pairs over 150 small intents, plus one intent of 120 pairs (a long chain of
    # paraphrases joined by union-find); batch size 32 means about 23 batches per epoch
    rows = [TrainRow(f"小问题{i}", f"小说法{i}", positive=True, group=f"g{i % 150}") for i in range(600)]
    rows += [TrainRow(f"关闭微粒贷{i}", f"怎么关闭{i}", positive=True, group="big") for i in range(120)]
    for seed in (1, 2):
        batches = mnrl_batches(rows, batch_size=32, seed=seed)
        sizes = [len(b) for b in batches]
        assert sum(sizes) / len(sizes) >= 28, sizes  # was 6 rows per batch: 120 batches for the big intent
        for batch in batches:
            groups = [r.group for r in batch]
            assert len(groups) == len(set(groups))
            texts = [match_key(t) for r in batch for t in (r.anchor, r.other)]
            assert len(texts) == len(set(texts))
        big = [r for b in batches for r in b if r.group == "big"]
        assert len(batches) - 3 <= len(big) <= len(batches)  # about one row per batch: a sample of its 120
        assert sum(sizes) >= 600  # the small intents all train
    first = {r.anchor for b in mnrl_batches(rows, 32, 1) for r in b if r.group == "big"}
    second = {r.anchor for b in mnrl_batches(rows, 32, 2) for r in b if r.group == "big"}
    assert first != second  # another epoch (seed) samples other rows of it
