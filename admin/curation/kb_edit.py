"""Edit FAQ YAML files in place without disturbing what people wrote around the edit.

Admins keep comments, key order, blank lines and quoting in their KB files, and review edits as
diffs, so every write goes through ruamel.yaml's round-trip mode with the indentation that
reproduces the file byte for byte. A write is atomic (temp file + rename) and is checked by
loading the whole KB again; an edit that would break the KB is undone before anyone sees it.

Callers serialise edits (index.filelock.FileLock on the data dir's KB edit lock): two admins
attaching at once must not both read the old file.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark, YAMLError
from ruamel.yaml.scalarstring import LiteralScalarString
from ruamel.yaml.tokens import CommentToken

from faq import FAQ, KBError, KnowledgeBase, load_kb
from faq.errors import ConflictError, FaqbotError, InvalidInputError, NotFoundError
from faq.schema import ID_PATTERN
from index.text import match_key, sanitize

MAX_TEXT_CHARS = 500
_DROP_CATEGORIES = {"Cc", "Cs", "Co", "Cn"}
_SPACES = re.compile(r"\s+")
# (mapping indent, sequence indent, sequence dash offset) tried in order; the first that
# reproduces the file unchanged is used for the edit.
INDENT_STYLES = ((2, 4, 2), (2, 2, 0), (4, 4, 2), (4, 6, 4), (4, 4, 0), (2, 4, 0), (4, 2, 0))


class KbEditError(FaqbotError):
    """An edit that cannot be made: a stable code, a message and (for a broken KB) its problems as details."""

    def __init__(self, code: str, message: str, problems: Sequence[dict[str, object]] = ()) -> None:
        super().__init__(message, code=code, details=list(problems) or None)


class EditRefusedError(KbEditError, InvalidInputError):
    """The edit itself is unusable: an empty or huge text, a bad id or file, a KB that is already broken."""


class EditConflictError(KbEditError, ConflictError):
    """The KB already says otherwise: the text is another FAQ's, the id exists, the file changed meanwhile."""


class FaqNotFoundError(KbEditError, NotFoundError):
    """No FAQ with that id to attach to."""


@dataclass(frozen=True)
class KbEdit:
    """What an edit did: which file and FAQ, which texts were written and which were already there."""

    file: Path
    faq_id: str
    line: int
    created: bool
    added: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    formatting_preserved: bool = True
    kb_hash: str = ""

    @property
    def changed(self) -> bool:
        return self.created or bool(self.added)

    def as_dict(self) -> dict[str, object]:
        return {"file": str(self.file), "faq_id": self.faq_id, "line": self.line, "created": self.created,
                "added": list(self.added), "skipped": list(self.skipped), "changed": self.changed,
                "formatting_preserved": self.formatting_preserved}


@dataclass
class _Document:
    """One YAML file loaded for round-trip editing."""

    path: Path
    original: str
    yaml: YAML
    data: Any
    exact: bool
    blank_between_faqs: bool = field(default=False)

    def dump(self) -> str:
        out = io.StringIO()
        self.yaml.dump(self.data, out)
        return out.getvalue()


def _make_yaml(mapping: int, sequence: int, offset: int) -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 1 << 16  # never re-wrap long answers
    yaml.allow_unicode = True
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    # ruamel writes a null as an empty value; our files spell it `null`.
    yaml.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return yaml


def _load_document(path: Path) -> _Document:
    try:
        original = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EditRefusedError("kb_unreadable", f"{path}: cannot read: {exc}") from exc
    first: tuple[YAML, Any] | None = None
    for style in INDENT_STYLES:
        yaml = _make_yaml(*style)
        try:
            data = yaml.load(original)
        except YAMLError as exc:
            raise EditRefusedError("invalid_kb", f"{path}: YAML error: {exc}") from exc
        if first is None:
            first = (yaml, data)
        out = io.StringIO()
        yaml.dump(data, out)
        if out.getvalue() == original:
            return _Document(path, original, yaml, data, exact=True)
    assert first is not None
    return _Document(path, original, first[0], first[1], exact=False)


def _write_atomic(path: Path, text: str) -> None:
    """Replace `path` in one rename so a reader (or the KB watcher) never sees half a file."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _load_kb_or_raise(kb_path: Path) -> KnowledgeBase:
    try:
        return load_kb(kb_path)
    except KBError as exc:
        raise EditRefusedError("invalid_kb", f"the knowledge base has {len(exc.problems)} problem(s); fix them first",
                               [p.as_dict() for p in exc.problems]) from exc


def _commit(doc: _Document, kb_path: Path, new_text: str) -> KnowledgeBase:
    """Write the edited file, then prove the whole KB still loads; undo the write if it does not."""
    _write_atomic(doc.path, new_text)
    try:
        return load_kb(kb_path)
    except KBError as exc:
        if doc.original:
            _write_atomic(doc.path, doc.original)
        else:
            doc.path.unlink(missing_ok=True)
        raise EditRefusedError("invalid_edit", "the edit would break the knowledge base; nothing was changed",
                               [p.as_dict() for p in exc.problems]) from exc


def clean_text(text: str, field_name: str) -> str:
    """Tidy one question/paraphrase for the file: the admin's own characters (full-width ？ stays),
    minus control/unencodable code points and runs of whitespace; refuse empty or huge ones."""
    if not isinstance(text, str) or not sanitize(text):
        raise EditRefusedError("empty_text", f"{field_name}: must contain some text")
    kept = "".join(ch for ch in text if ch.isspace() or unicodedata.category(ch) not in _DROP_CATEGORIES)
    cleaned = _SPACES.sub(" ", kept).strip().encode("utf-8", "ignore").decode("utf-8")
    if not cleaned:
        raise EditRefusedError("empty_text", f"{field_name}: must contain some text")
    if len(cleaned) > MAX_TEXT_CHARS:
        raise EditRefusedError("text_too_long", f"{field_name}: longer than {MAX_TEXT_CHARS} characters")
    return cleaned


def _owner_by_key(kb: KnowledgeBase) -> dict[str, FAQ]:
    owners: dict[str, FAQ] = {}
    for faq in kb.faqs:
        for text in faq.texts:
            owners.setdefault(match_key(text), faq)
    return owners


def _split_new_texts(kb: KnowledgeBase, faq_id: str | None, texts: Sequence[str]) -> tuple[list[str], list[str]]:
    """(to add, already this FAQ's); a text that is another FAQ's question/paraphrase is a conflict."""
    owners = _owner_by_key(kb)
    added: list[str] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for text in texts:
        key = match_key(text)
        if key in seen:
            continue
        seen.add(key)
        owner = owners.get(key)
        if owner is None:
            added.append(text)
        elif owner.id == faq_id:
            skipped.append(text)
        else:
            raise EditConflictError("text_in_other_faq",
                                    f"“{text}” is already a question of FAQ {owner.id!r} ({owner.source}:{owner.line}); "
                                    "attaching it to another FAQ would make the two indistinguishable")
    return added, skipped


def _faq_nodes(doc: _Document) -> CommentedSeq:
    faqs = doc.data.get("faqs") if isinstance(doc.data, CommentedMap) else None
    if not isinstance(faqs, CommentedSeq):
        raise EditRefusedError("invalid_kb", f"{doc.path}: no `faqs:` list to edit")
    return faqs


def _is_block(node: object) -> bool:
    return isinstance(node, CommentedMap | CommentedSeq) and len(node) > 0 and not node.fa.flow_style()


def _trailing_holder(node: CommentedMap | CommentedSeq) -> tuple[CommentedMap | CommentedSeq, Any, int]:
    """Where ruamel keeps the comment after the last line of `node`: (container, key or index, slot)."""
    while True:
        if isinstance(node, CommentedMap):
            key = list(node.keys())[-1]
            if _is_block(node[key]):
                node = node[key]
                continue
            return node, key, 2
        index = len(node) - 1
        if _is_block(node[index]):
            node = node[index]
            continue
        return node, index, 0


def _get_comment(holder: tuple[CommentedMap | CommentedSeq, Any, int]) -> CommentToken | None:
    container, key, slot = holder
    entry = container.ca.items.get(key)
    return entry[slot] if entry and len(entry) > slot else None


def _set_comment(holder: tuple[CommentedMap | CommentedSeq, Any, int], value: str | None) -> None:
    container, key, slot = holder
    entry = container.ca.items.get(key)
    if value is None:
        if entry:
            entry[slot] = None
            if not any(entry):
                del container.ca.items[key]
        return
    if not entry:
        entry = [None, None, None, None]
        container.ca.items[key] = entry
    entry[slot] = CommentToken(value, CommentMark(0), None)


def _keep_own(holder: tuple[CommentedMap | CommentedSeq, Any, int], token: CommentToken, own: str | None) -> None:
    """Leave only the line's own end comment on the old last item, in its original column."""
    if own is None:
        _set_comment(holder, None)
    else:
        token.value = own


def _split_trailing(value: str) -> tuple[str | None, str]:
    """A trailing comment token holds the line's own end (`  # note\\n`) and what follows (blank lines,
    the next entry's comments); split it so appended items go between the two."""
    cut = value.find("\n")
    if cut < 0:
        return value, ""
    own, rest = value[: cut + 1], value[cut + 1 :]
    return (own if own.strip() else None), rest


def _append_block_items(seq: CommentedSeq, items: Sequence[str]) -> None:
    """Append to a block sequence, keeping the blank lines and comments that followed it after the new items."""
    if not seq or not _is_block(seq):
        seq.extend(items)
        return
    holder = _trailing_holder(seq)
    token = _get_comment(holder)
    seq.extend(items)
    if token is None:
        return
    own, rest = _split_trailing(token.value)
    _keep_own(holder, token, own)
    if rest:
        _set_comment(_trailing_holder(seq), "\n" + rest)


def add_paraphrases(kb_path: Path, faq_id: str, texts: Sequence[str]) -> KbEdit:
    """Append `texts` to the paraphrases of FAQ `faq_id`, in the file that defines it."""
    kb_path = Path(kb_path)
    cleaned = [clean_text(t, f"paraphrases[{i}]") for i, t in enumerate(texts)]
    if not cleaned:
        raise EditRefusedError("empty_text", "give at least one paraphrase")
    kb = _load_kb_or_raise(kb_path)
    faq = kb.by_id().get(faq_id)
    if faq is None or faq.source is None:
        raise FaqNotFoundError("faq_not_found", f"no FAQ with id {faq_id!r} in {kb_path}")
    added, skipped = _split_new_texts(kb, faq_id, cleaned)
    if not added:
        return KbEdit(faq.source, faq_id, faq.line, created=False, skipped=tuple(skipped), kb_hash=kb.content_hash)
    doc = _load_document(faq.source)
    entry = next((node for node in _faq_nodes(doc) if isinstance(node, CommentedMap) and node.get("id") == faq_id),
                 None)
    if entry is None:
        raise EditConflictError("kb_changed", f"FAQ {faq_id!r} is no longer in {faq.source}; reload and retry")
    paraphrases = entry.get("paraphrases")
    if isinstance(paraphrases, CommentedSeq):
        _append_block_items(paraphrases, added)
    else:
        new_list = CommentedSeq(added)
        if "paraphrases" in entry:
            entry["paraphrases"] = new_list
        else:
            keys = list(entry.keys())
            position = keys.index("question") + 1 if "question" in keys else len(keys)
            if position == len(keys):
                _move_trailing_into(entry, new_list)
            entry.insert(position, "paraphrases", new_list)
    new_kb = _commit(doc, kb_path, doc.dump())
    written = new_kb.by_id()[faq_id]
    return KbEdit(faq.source, faq_id, written.line, created=False, added=tuple(added), skipped=tuple(skipped),
                  formatting_preserved=doc.exact, kb_hash=new_kb.content_hash)


def _move_trailing_into(entry: CommentedMap, new_last: CommentedSeq) -> None:
    """Before adding a key at the end of `entry`, move the blank lines that followed it to after the new key."""
    holder = _trailing_holder(entry)
    token = _get_comment(holder)
    if token is None:
        return
    own, rest = _split_trailing(token.value)
    _keep_own(holder, token, own)
    if rest:
        new_last.ca.items[len(new_last) - 1] = [CommentToken("\n" + rest, CommentMark(0), None), None, None, None]


def _resolve_target_file(kb_path: Path, file: str | Path | None, kb: KnowledgeBase) -> Path:
    """The file a new FAQ goes to: the KB file itself, or a *.yaml inside the KB directory."""
    if not kb_path.is_dir():
        if file is not None and Path(file).name != kb_path.name:
            raise EditRefusedError("bad_file", f"the knowledge base is the single file {kb_path}; leave `file` out")
        return kb_path
    if file is None:
        return kb.files[-1] if kb.files else kb_path / "faq.yaml"
    root = kb_path.resolve()
    if "\x00" in str(file) or len(str(file)) > 255:
        raise EditRefusedError("bad_file", "file: not a usable file name")
    candidate = Path(file)
    target = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if root not in target.parents:
        raise EditRefusedError("bad_file", f"file: {file} is outside the knowledge base directory {kb_path}")
    if target.suffix not in (".yaml", ".yml") or target.stem == "tests":
        raise EditRefusedError("bad_file", "file: must be a .yaml or .yml file (and not tests.yaml)")
    existing = {f.resolve(): f for f in kb.files}
    return existing.get(target, target)


def _style_of(doc: _Document) -> tuple[bool, bool]:
    """(blank line between FAQs?, flow-style tags?) as the file already does it."""
    faqs = _faq_nodes(doc)
    lines = doc.original.splitlines()
    blank = False
    for i in range(1, len(faqs)):
        line_no = faqs.lc.item(i)[0]
        if line_no > 0 and not lines[line_no - 1].strip():
            blank = True
            break
    flow_tags = any(isinstance(n, CommentedMap) and isinstance(n.get("tags"), CommentedSeq)
                    and n["tags"].fa.flow_style() for n in faqs)
    return blank, flow_tags or not any(isinstance(n, CommentedMap) and "tags" in n for n in faqs)


def add_faq(kb_path: Path, faq_id: str, question: str, answer: str, *, paraphrases: Sequence[str] = (),
            tags: Sequence[str] = (), file: str | Path | None = None) -> KbEdit:
    """Append a new FAQ entry to `file` (default: the KB's last file), in the file's own style."""
    kb_path = Path(kb_path)
    if not ID_PATTERN.match(faq_id or ""):
        raise EditRefusedError("bad_id", "faq_id: use 1-64 of A-Z a-z 0-9 _ . -")
    question = clean_text(question, "question")
    if not answer or not answer.strip():
        raise EditRefusedError("empty_text", "answer: must not be empty")
    answer = answer.strip()
    for i, tag in enumerate(tags):
        if not isinstance(tag, str) or not sanitize(tag):
            raise EditRefusedError("empty_text", f"tags[{i}]: must not be empty")
    kb = _load_kb_or_raise(kb_path)
    if faq_id in kb.by_id():
        existing = kb.by_id()[faq_id]
        raise EditConflictError("faq_exists", f"an FAQ with id {faq_id!r} already exists ({existing.source}:{existing.line})")
    cleaned = [clean_text(p, f"paraphrases[{i}]") for i, p in enumerate(paraphrases)]
    texts, _ = _split_new_texts(kb, None, [question, *cleaned])
    extra = [t for t in texts if match_key(t) != match_key(question)]
    target = _resolve_target_file(kb_path, file, kb)
    entry = CommentedMap()
    entry["id"] = faq_id
    entry["question"] = question
    if extra:
        entry["paraphrases"] = CommentedSeq(extra)
    entry["answer"] = LiteralScalarString(answer + "\n") if "\n" in answer else answer
    if target.exists():
        doc = _load_document(target)
        faqs = _faq_nodes(doc)
        blank, flow_tags = _style_of(doc)
        if faqs:
            holder = _trailing_holder(faqs)
            token = _get_comment(holder)
            if blank:
                current = token.value if token else "\n"
                if not current.endswith("\n\n"):
                    _set_comment(holder, current + "\n")
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        doc = _Document(target, "", _make_yaml(2, 4, 2), CommentedMap([("version", 1), ("faqs", CommentedSeq())]),
                        exact=True)
        faqs = doc.data["faqs"]
        flow_tags = True
    if tags:
        tag_list = CommentedSeq([sanitize(t) for t in tags])
        if flow_tags:
            tag_list.fa.set_flow_style()
        entry["tags"] = tag_list
    faqs.append(entry)
    new_kb = _commit(doc, kb_path, doc.dump())
    written = new_kb.by_id()[faq_id]
    return KbEdit(target, faq_id, written.line, created=True, added=(question, *extra),
                  formatting_preserved=doc.exact, kb_hash=new_kb.content_hash)
