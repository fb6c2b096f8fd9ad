"""Training data for `faqbot finetune`: reading files, building pairs from the KB and the miss log,
mining hard negatives, and batching (docs/finetune.md).

Everything becomes `TrainRow`s: an anchor and a second text, either as a positive (with an optional
negative: the MultipleNegativesRankingLoss shape) or with a score (the CoSENT / CosineSimilarityLoss
shape). `rows_for_loss` turns a mixed set into what the chosen loss needs. Every text passes
`index.text.sanitize` here, so training sees exactly what the encoder sees when serving.

File formats (one example per line, UTF-8):
- JSONL `{"query", "positive"}` pairs, `{"query", "positive", "negative"}` triplets (the seed format),
  `{"sentence_a", "sentence_b", "label"}` scored pairs (0/1 or a 0-5 score);
- TSV `s1<TAB>s2<TAB>label` (the benchmark files' format).
A bad line (wrong keys, a blank line, bytes that are not UTF-8, an empty text) stops loading with
`TrainingDataError("FILE:LINE: what is wrong")`: a silently skipped line would train on less than asked.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from admin.quality.evaluation import LabelledPair
from admin.quality.text_groups import TextGroups
from faq import KnowledgeBase
from faq.errors import FaqbotError
from index.text import match_key, sanitize

TSV_SUFFIXES = (".tsv", ".txt")
PAIR_KEYS = {"query", "positive"}
TRIPLET_KEYS = {"query", "positive", "negative"}
SCORED_KEYS = {"sentence_a", "sentence_b", "label"}
# Optional keys a row may carry without changing its meaning (`faqbot misses export --training` writes faq_id).
EXTRA_KEYS = {"faq_id", "group", "id"}

EncodeFn = Callable[[Sequence[str]], np.ndarray]


class TrainingDataError(FaqbotError, ValueError):
    """A training file or source that cannot be used; the message names the file and line."""

    code = "invalid_training_data"


@dataclass(frozen=True)
class TrainRow:
    """One training example. `positive` xor `score` is set by the source; `group` keeps rows of one
    intent out of each other's in-batch negatives; `origin` is `FILE:LINE` (or `kb:<id>`) for messages."""

    anchor: str
    other: str
    positive: bool | None = None  # True: (anchor, other) mean the same; None: see score
    negative: str | None = None
    score: float | None = None
    group: str = ""
    origin: str = ""


# --- files --------------------------------------------------------------------------------------


def _text(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise TrainingDataError(f"{where}: \"{key}\" must be text, got {type(value).__name__}")
    clean = sanitize(value)
    if not clean:
        raise TrainingDataError(f"{where}: \"{key}\" is empty")
    return clean


def _score(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TrainingDataError(f"{where}: label {value!r} is not a number")
    try:
        score = float(value)
    except ValueError as exc:
        raise TrainingDataError(f"{where}: label {value!r} is not a number") from exc
    if not 0.0 <= score <= 5.0:
        raise TrainingDataError(f"{where}: label {score:g} is outside 0..5 (use 0/1, or a 0-5 similarity score)")
    return score


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    """(line number, text) of each line, decoding line by line so a bad byte names its line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TrainingDataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # Excel's UTF-8 byte-order mark
    chunks = raw.split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()  # the newline that ends the last line is not a line
    for line_no, chunk in enumerate(chunks, 1):
        try:
            yield line_no, chunk.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            raise TrainingDataError(
                f"{path}:{line_no}: not UTF-8 (byte 0x{chunk[exc.start]:02x} at column {exc.start + 1}); "
                "save the file as UTF-8"
            ) from exc


def _json_row(obj: Any, where: str) -> TrainRow:
    if not isinstance(obj, dict):
        raise TrainingDataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    keys = set(obj) - EXTRA_KEYS
    group = str(obj.get("faq_id") or obj.get("group") or "")
    if keys in (PAIR_KEYS, TRIPLET_KEYS):
        negative = _text(obj["negative"], where, "negative") if "negative" in keys else None
        return TrainRow(_text(obj["query"], where, "query"), _text(obj["positive"], where, "positive"),
                        positive=True, negative=negative, group=group, origin=where)
    if keys == SCORED_KEYS:
        return TrainRow(_text(obj["sentence_a"], where, "sentence_a"), _text(obj["sentence_b"], where, "sentence_b"),
                        score=_score(obj["label"], where), group=group, origin=where)
    shown = ", ".join(sorted(obj)) or "none"
    raise TrainingDataError(
        f"{where}: keys {shown}; expected {{\"query\", \"positive\"}}, {{\"query\", \"positive\", \"negative\"}} "
        "or {\"sentence_a\", \"sentence_b\", \"label\"}"
    )


def load_training_file(path: Path) -> list[TrainRow]:
    """Read one JSONL or TSV training file (by suffix; `.tsv`/`.txt` are TSV) into rows."""
    path = Path(path)
    tsv = path.suffix.lower() in TSV_SUFFIXES
    rows = []
    for line_no, line in _lines(path):
        where = f"{path}:{line_no}"
        if not line.strip():
            raise TrainingDataError(f"{where}: blank line (one example per line; remove empty lines)")
        if tsv:
            parts = line.split("\t")
            if len(parts) != 3:
                raise TrainingDataError(f"{where}: expected s1<TAB>s2<TAB>label, found {len(parts)} field(s)")
            rows.append(TrainRow(_text(parts[0], where, "s1"), _text(parts[1], where, "s2"),
                                 score=_score(parts[2].strip(), where), origin=where))
        else:
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise TrainingDataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
            rows.append(_json_row(obj, where))
    if not rows:
        raise TrainingDataError(f"{path}: no training examples")
    return rows


# --- from the KB and the miss log ---------------------------------------------------------------


def pairs_from_kb(kb: KnowledgeBase, max_per_faq: int = 20) -> list[TrainRow]:
    """Each paraphrase with its FAQ's question, and paraphrases of one FAQ with each other (capped per FAQ)."""
    rows = []
    for faq in kb.faqs:
        texts = list(dict.fromkeys(sanitize(t) for t in faq.texts if sanitize(t)))
        made = 0
        for i, anchor in enumerate(texts[1:], 1):
            for other in texts[:i]:
                if made >= max_per_faq:
                    break
                rows.append(TrainRow(anchor, other, positive=True, group=faq.id, origin=f"kb:{faq.id}"))
                made += 1
    return rows


def pairs_from_misses(miss_rows: Iterable[dict[str, Any]], kb: KnowledgeBase) -> list[TrainRow]:
    """Resolved misses (attached to an FAQ, or made a new one) with that FAQ's question.

    Same rules as `faqbot misses export --training`: the FAQ must still be in the KB, and a miss
    that is just the FAQ's question again teaches nothing.
    """
    faqs = kb.by_id()
    rows, seen = [], set()
    for row in miss_rows:
        faq = faqs.get(row.get("resolved_faq_id") or "")
        if row.get("status") != "resolved" or row.get("resolved_action") not in ("attach", "new") or faq is None:
            continue
        message = sanitize(str(row.get("message") or ""))
        key = (match_key(message), faq.id)
        if not message or key in seen or key[0] == match_key(faq.question):
            continue
        seen.add(key)
        rows.append(TrainRow(message, sanitize(faq.question), positive=True, group=faq.id,
                             origin=f"miss:{row.get('id')}"))
    return rows


def mine_kb_negatives(rows: Sequence[TrainRow], kb: KnowledgeBase, encode: EncodeFn) -> list[TrainRow]:
    """Give each KB-grouped row the question of the FAQ the model confuses its anchor with most.

    "Confuses with" = the other FAQ whose best text is most similar to the anchor (the FAQ the bot
    would answer if the right one were missing). Rows that already have a negative keep it.
    """
    faqs = [f for f in kb.faqs if f.id]
    if len(faqs) < 2:
        return list(rows)
    texts = kb.texts()
    owner = np.array([i for i, f in enumerate(faqs) for _ in f.texts])
    kb_vectors = encode([sanitize(t) for _, t in texts])
    position = {f.id: i for i, f in enumerate(faqs)}
    todo = [i for i, r in enumerate(rows) if r.negative is None and r.group in position]
    if not todo:
        return list(rows)
    anchors = encode([rows[i].anchor for i in todo])
    sims = anchors @ kb_vectors.T
    out = list(rows)
    for row_index, row_sims in zip(todo, sims, strict=True):
        per_faq = np.full(len(faqs), -np.inf)
        np.maximum.at(per_faq, owner, row_sims)
        per_faq[position[rows[row_index].group]] = -np.inf
        confused = faqs[int(np.argmax(per_faq))]
        out[row_index] = replace(rows[row_index], negative=sanitize(confused.question))
    return out


def mine_pair_negatives(rows: Sequence[TrainRow], encode: EncodeFn, chunk: int = 512) -> list[TrainRow]:
    """Give each same-intent pair without a negative the training text of another intent that the model
    scores closest to its anchor, but still below the pair's own partner.

    This is for pair files with no FAQ ids: the texts themselves are the "FAQ". Rows must carry their
    intent (`intent_groups`); a text of a same-intent row belongs to that row's intent, any other text
    (one seen only in label-0 pairs) is an intent of its own. A text the model already ranks above the
    known partner is skipped: in noisy sets such as BQ, that text is more often an unlabelled
    paraphrase than a real confusion, and teaching it as "different" would teach noise.
    """
    threshold = positive_min(rows)
    todo = [i for i, r in enumerate(rows) if r.negative is None and same_intent(r, threshold)]
    if not todo:
        return list(rows)
    texts: dict[str, str] = {}
    text_intent: dict[str, str] = {}
    for row in rows:
        for text in (row.anchor, row.other, row.negative):
            if text is not None:
                texts.setdefault(match_key(text), text)
        if same_intent(row, threshold):
            text_intent[match_key(row.anchor)] = text_intent[match_key(row.other)] = row.group
    keys = list(texts)
    position = {key: i for i, key in enumerate(keys)}
    ids: dict[str, int] = {}
    intent = np.array([ids.setdefault(text_intent.get(key, "text:" + key), len(ids)) for key in keys])
    vectors = encode([texts[key] for key in keys])
    out = list(rows)
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        anchors = np.array([position[match_key(rows[i].anchor)] for i in part])
        partners = np.array([position[match_key(rows[i].other)] for i in part])
        sims = vectors[anchors] @ vectors.T
        own = sims[np.arange(len(part)), partners]
        sims[intent[None, :] == intent[anchors][:, None]] = -np.inf
        sims[sims >= own[:, None]] = -np.inf
        best = np.argmax(sims, axis=1)
        for row_index, column, found in zip(part, best, np.isfinite(sims[np.arange(len(part)), best]), strict=True):
            if found:
                out[row_index] = replace(rows[row_index], negative=texts[keys[column]])
    return out


TEXT_INTENT = "t:"  # prefix of the groups `intent_groups` derives from texts (not an FAQ id)


def intent_groups(rows: Sequence[TrainRow]) -> list[TrainRow]:
    """Give rows without a group one from their texts: texts joined by positive rows form one intent."""
    groups = TextGroups()
    threshold = positive_min(rows)
    for row in rows:
        if same_intent(row, threshold):
            groups.join(match_key(row.other), match_key(row.anchor))
    return [row if row.group else replace(row, group=TEXT_INTENT + groups.find(match_key(row.anchor))) for row in rows]


def same_intent(row: TrainRow, threshold: float) -> bool:
    """A positive pair, or a pair scored at or above `threshold` (`positive_min`)."""
    return bool(row.positive) or (row.score is not None and row.score >= threshold)


def positive_min(rows: Sequence[TrainRow]) -> float:
    """Score from which a scored pair counts as "same intent": 1 for 0/1 labels, 4 for 0-5 scores."""
    scores = {r.score for r in rows if r.score is not None}
    return 1.0 if scores <= {0.0, 1.0} else 4.0


def rows_for_loss(rows: Sequence[TrainRow], loss: str) -> list[TrainRow]:
    """Reshape rows for a loss: `mnrl` needs (anchor, positive[, negative]); `cosent`/`cosine` need scores.

    For `mnrl`, scored pairs at or above `positive_min` become positives, and a pair scored 0 that
    shares a text with a positive gives that positive its hard negative (in BQ/LCQMC these
    labelled near-misses are the negatives the data offers) unless mining gave it one already.
    For the score losses, a positive is scored 1 and a triplet also yields (anchor, negative) scored 0; 0-5 scores are kept (CoSENT ranks them; the
    cosine loss divides them by 5).
    """
    if loss == "mnrl":
        threshold = positive_min(rows)
        partners: dict[str, list[str]] = {}
        for row in rows:
            if row.score is not None and row.score == 0.0:
                partners.setdefault(row.anchor, []).append(row.other)
                partners.setdefault(row.other, []).append(row.anchor)
        out = []
        for row in rows:
            if row.positive:
                out.append(row)
            elif row.score is not None and row.score >= threshold:
                negative = row.negative or next(iter(partners.get(row.anchor, []) + partners.get(row.other, [])), None)
                out.append(replace(row, positive=True, score=None, negative=negative))
        return out
    out = []
    for row in rows:
        if row.score is not None:
            out.append(row)
        elif row.positive:
            out.append(replace(row, positive=None, score=1.0, negative=None))
            if row.negative is not None:
                out.append(replace(row, other=row.negative, positive=None, score=0.0, negative=None))
    return out


# --- batching -----------------------------------------------------------------------------------


def mnrl_batches(rows: Sequence[TrainRow], batch_size: int, seed: int) -> list[list[TrainRow]]:
    """Shuffled, full batches where no two rows share an intent group or a text.

    With in-batch negatives, a second paraphrase of the same FAQ in the batch would be taught as
    "different": the false negative this avoids. Each batch is filled from the front of the shuffled
    pool with the rows that fit; the ones that do not wait for the next batch.

    An intent can give only one row per batch, so one big intent would stretch the epoch into many
    small batches (BQ dev: one intent of 182 pairs made batches of 20 rows on average, a fifth of them
    under 8, with batch size 32). So an intent with more rows than the epoch has batches gives a seeded
    sample of them per epoch (another sample in the next). Rows with and without a hard negative go into
    separate batches (a batch must have the same columns). Batches of one row teach nothing and are dropped.
    """
    rng = random.Random(seed)
    batches: list[list[TrainRow]] = []
    for with_negative in (True, False):
        pool = [r for r in rows if (r.negative is not None) == with_negative]
        per_group: dict[str, list[TrainRow]] = {}
        for row in pool:
            per_group.setdefault(row.group, []).append(row)
        # the batches this epoch needs: fewer intents than batch_size cannot fill a batch
        limit = -(-len(pool) // max(1, min(batch_size, len(per_group))))
        pool = [r for group in per_group.values() for r in (rng.sample(group, limit) if len(group) > limit else group)]
        rng.shuffle(pool)
        while pool:
            batch: list[TrainRow] = []
            used: set[str] = set()
            waiting: list[TrainRow] = []
            for position, row in enumerate(pool):
                if len(batch) >= batch_size:
                    waiting.extend(pool[position:])
                    break
                keys = {"g:" + row.group, "t:" + match_key(row.anchor), "t:" + match_key(row.other)}
                if row.negative is not None:
                    keys.add("t:" + match_key(row.negative))
                if keys & used:
                    waiting.append(row)
                else:
                    batch.append(row)
                    used |= keys
            if len(batch) > 1:
                batches.append(batch)
            pool = waiting
    rng.shuffle(batches)
    return batches


def plain_batches(rows: Sequence[TrainRow], batch_size: int, seed: int) -> list[list[TrainRow]]:
    pool = list(rows)
    random.Random(seed).shuffle(pool)
    return [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]


def sample_rows(rows: Sequence[TrainRow], max_rows: int | None, seed: int) -> list[TrainRow]:
    """A seeded sample of at most `max_rows` rows (file order kept), for a run that must fit a time budget."""
    if max_rows is None or len(rows) <= max_rows:
        return list(rows)
    keep = sorted(random.Random(seed).sample(range(len(rows)), max_rows))
    return [rows[i] for i in keep]


# --- held-out calibration pairs -----------------------------------------------------------------


def _text_components(rows: Sequence[TrainRow]) -> list[int]:
    """For each row, the id of its connected component of texts (rows sharing any text, even via a
    negative or a label-0 pair, are connected)."""
    groups = TextGroups()

    def texts(row: TrainRow) -> list[str]:
        return [match_key(t) for t in (row.anchor, row.other, row.negative) if t is not None]

    for row in rows:
        first, *others = texts(row)
        for other in others:
            groups.join(first, other)
    roots: dict[str, int] = {}
    return [roots.setdefault(groups.find(texts(row)[0]), len(roots)) for row in rows]


def holdout_split(rows: Sequence[TrainRow], fraction: float, seed: int) -> tuple[list[TrainRow], list[TrainRow]]:
    """(train, held out): about `fraction` of the rows held out, grouped by text so no text (after
    `match_key`) is in both parts — a held-out pair is then truly unseen, not a re-worded training pair.

    Whole connected components of texts go to one side, taken in a seeded shuffle until the held-out
    part reaches the fraction; file order is kept on both sides. Deterministic for a seed.
    """
    if not 0.0 < fraction < 1.0:
        raise TrainingDataError(f"--holdout {fraction:g}: give a fraction between 0 and 1 (e.g. 0.2), or 0 for none")
    component = _text_components(rows)
    sizes: dict[int, int] = {}
    for c in component:
        sizes[c] = sizes.get(c, 0) + 1
    order = list(sizes)
    random.Random(seed).shuffle(order)
    target, held, chosen = fraction * len(rows), 0, set()
    for c in order:
        if held >= target:
            break
        if held + sizes[c] > target and held and abs(held + sizes[c] - target) > abs(held - target):
            continue  # a big component that would overshoot: try smaller ones
        chosen.add(c)
        held += sizes[c]
    train = [r for r, c in zip(rows, component, strict=True) if c not in chosen]
    heldout = [r for r, c in zip(rows, component, strict=True) if c in chosen]
    return train, heldout


def labelled_pairs(rows: Sequence[TrainRow]) -> list[LabelledPair]:
    """Rows as 0/1 labelled pairs (what calibration reads): positives 1, triplet negatives 0, 0/1 labels
    as they are, 0-5 scores >= 4 as 1 and <= 1 as 0 (the uncertain middle is left out)."""
    binary = positive_min(rows) == 1.0
    pairs = []
    for row in rows:
        if row.positive:
            pairs.append(LabelledPair(row.anchor, row.other, 1.0))
            if row.negative is not None:
                pairs.append(LabelledPair(row.anchor, row.negative, 0.0))
        elif row.score is not None:
            if binary:
                pairs.append(LabelledPair(row.anchor, row.other, row.score))
            elif row.score >= 4.0 or row.score <= 1.0:
                pairs.append(LabelledPair(row.anchor, row.other, 1.0 if row.score >= 4.0 else 0.0))
    return pairs


def has_labelled_pairs(rows: Sequence[TrainRow]) -> bool:
    """True when the rows hold scored pairs of both kinds (same / different): enough to calibrate on."""
    labels = {p.label for p in labelled_pairs([r for r in rows if r.score is not None])}
    return labels >= {0.0, 1.0}


def training_texts(rows: Sequence[TrainRow]) -> set[str]:
    """Every text a model trained on `rows` has seen (as `match_key`), negatives included."""
    return {match_key(t) for r in rows for t in (r.anchor, r.other, r.negative) if t is not None}


def drop_seen(pairs: Sequence[LabelledPair], seen: set[str]) -> tuple[list[LabelledPair], int]:
    """(pairs with neither text in `seen`, how many were dropped): calibration must not read training data."""
    kept = [p for p in pairs if match_key(p.s1) not in seen and match_key(p.s2) not in seen]
    return kept, len(pairs) - len(kept)
