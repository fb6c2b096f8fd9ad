"""Load and validate FAQ YAML with file:line:field errors.

We walk PyYAML's composed node tree (safe: only standard tags) instead of `safe_load`'s plain
dicts, because the nodes keep line marks: every problem can name its file, line and field.
Aliases are never expanded beyond what the schema allows, so "billion laughs" files cost nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import yaml

from faq.errors import InvalidInputError
from faq.schema import FAQ, ID_PATTERN, KNOWN_CHANNELS, KnowledgeBase, parse_when

MAX_FILE_BYTES = 20 * 1024 * 1024
STR_TAG = "tag:yaml.org,2002:str"
NULL_TAG = "tag:yaml.org,2002:null"
MAP_TAG = "tag:yaml.org,2002:map"
SEQ_TAG = "tag:yaml.org,2002:seq"
FLOAT_TAGS = {"tag:yaml.org,2002:float", "tag:yaml.org,2002:int"}
TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
PLAIN_TAGS = {STR_TAG, NULL_TAG, MAP_TAG, SEQ_TAG, *FLOAT_TAGS, "tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp"}
TOP_KEYS = {"version", "defaults", "faqs"}
DEFAULT_KEYS = {"threshold", "handoff_phrases"}
FAQ_KEYS = {"id", "question", "paraphrases", "answer", "tags", "threshold", "related", "channel_answers", "valid_from",
            "valid_to"}
REQUIRED_FAQ_KEYS = ("id", "question", "answer")


@dataclass(frozen=True)
class KBProblem:
    """One thing wrong with a KB, located for a human: `file:line: field: message`."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "field": self.field, "message": self.message}


class KBError(InvalidInputError):
    """A KB that cannot be used; carries every problem found, not just the first.

    `message` is the one-line summary, `details` every problem as a dict, and `str()` the summary
    with the first 50 problems, one `file:line: field: message` a line (what a log or /readyz shows).
    """

    code = "invalid_kb"

    def __init__(self, problems: list[KBProblem], *, subject: str = "the knowledge base") -> None:
        super().__init__(f"{len(problems)} problem(s) in {subject}", details=[p.as_dict() for p in problems])
        self.problems = problems

    def __str__(self) -> str:
        lines = "\n".join(str(p) for p in self.problems[:50])
        more = f"\n… and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        return f"{self.message}:\n{lines}{more}"


def kb_files(path: Path) -> list[Path]:
    """The YAML files of a KB: the file itself, or every *.yaml/*.yml under a directory (golden tests excluded)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
        return [p for p in files if p.stem != "tests"]  # the golden questions (faq.golden) are no KB
    return [path]


def load_kb(path: str | Path) -> KnowledgeBase:
    """Load a KB file or directory; raise KBError listing every problem (file, line, field)."""
    root = Path(path)
    if not root.exists():
        raise KBError([KBProblem(str(root), 0, "-", "no such file or directory")])
    files = kb_files(root)
    if not files:
        raise KBError([KBProblem(str(root), 0, "-", "no .yaml files found")])
    problems: list[KBProblem] = []
    faqs: list[FAQ] = []
    default_threshold: float | None = None
    handoff_phrases: list[str] = []
    references: list[_Reference] = []
    for file in files:
        parsed = _load_file(file, problems)
        if parsed is None:
            continue
        faqs.extend(parsed.faqs)
        references.extend(parsed.references)
        if parsed.default_threshold is not None:
            default_threshold = parsed.default_threshold
        handoff_phrases.extend(parsed.handoff_phrases)
    seen: dict[str, FAQ] = {}
    for f in faqs:
        if f.id in seen:
            first = seen[f.id]
            problems.append(
                KBProblem(str(f.source), f.line, "id", f"duplicate id {f.id!r} (first defined at {first.source}:{first.line})")
            )
        else:
            seen[f.id] = f
    for ref in references:  # `related` may name an FAQ of any file: checked once all are read
        if ref.target not in seen:
            problems.append(KBProblem(ref.file, ref.line, ref.field, f"unknown FAQ id {ref.target!r}"))
    if not faqs and not problems:
        problems.append(KBProblem(str(root), 0, "faqs", "the knowledge base has no FAQs"))
    if problems:
        raise KBError(problems)
    return KnowledgeBase(faqs=tuple(faqs), default_threshold=default_threshold, files=tuple(files),
                         handoff_phrases=tuple(dict.fromkeys(handoff_phrases)))


@dataclass(frozen=True)
class _Reference:
    """One FAQ id named in `related`, where it was written (checked against every file's ids)."""

    file: str
    line: int
    field: str
    target: str


@dataclass
class _FileContent:
    """What one KB file contributes: its FAQs, its `defaults`, the FAQ ids its `related` lists name."""

    faqs: list[FAQ]
    default_threshold: float | None = None
    handoff_phrases: tuple[str, ...] = ()
    references: list[_Reference] = field(default_factory=list)


def _load_file(file: Path, problems: list[KBProblem]) -> _FileContent | None:
    name = str(file)
    try:
        size = file.stat().st_size
        if size > MAX_FILE_BYTES:
            problems.append(KBProblem(name, 0, "-", f"file is {size} bytes, over the {MAX_FILE_BYTES} limit"))
            return None
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(KBProblem(name, 0, "-", f"not UTF-8 text ({exc.reason} at byte {exc.start})"))
        return None
    except OSError as exc:
        problems.append(KBProblem(name, 0, "-", f"cannot read: {exc.strerror}"))
        return None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        problems.append(KBProblem(name, line, "-", f"YAML syntax error: {exc.problem or exc}"))
        return None
    except yaml.YAMLError as exc:
        problems.append(KBProblem(name, 0, "-", f"YAML error: {exc}"))
        return None
    except RecursionError:
        problems.append(KBProblem(name, 0, "-", "nested too deeply to be a knowledge base"))
        return None
    if root is None:
        problems.append(KBProblem(name, 1, "-", "empty file"))
        return None
    return _FileReader(name, problems).read(root)


class _FileReader:
    """Turns one file's node tree into FAQs, appending problems instead of stopping at the first."""

    def __init__(self, name: str, problems: list[KBProblem]) -> None:
        self.name = name
        self.problems = problems
        self.references: list[_Reference] = []

    def problem(self, node: yaml.Node | None, field: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        self.problems.append(KBProblem(self.name, line, field, message))

    def mapping(self, node: yaml.Node, field: str, allowed: set[str]) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, field, f"expected a mapping, got {_kind(node)}")
            return None
        if node.tag != MAP_TAG:
            self.problem(node, field, f"unsupported tag {node.tag!r} (only plain YAML is accepted)")
            return None
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != STR_TAG:
                self.problem(key_node, field, f"keys must be plain strings, got {_kind(key_node)}")
                continue
            key = key_node.value
            path = f"{field}.{key}" if field != "-" else key
            if key not in allowed:
                self.problem(key_node, path, f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
                continue
            if key in out:
                self.problem(key_node, path, f"key {key!r} given twice")
                continue
            out[key] = (key_node, value_node)
        return out

    def string(self, node: yaml.Node, field: str, *, required: bool = True) -> str | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == NULL_TAG and not required:
            return None
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (STR_TAG, *FLOAT_TAGS):
            self.problem(node, field, f"expected text, got {_kind(node)}")
            return None
        value = node.value.strip()
        if not value:
            self.problem(node, field, "must not be empty")
            return None
        return value

    def number(self, node: yaml.Node, field: str) -> float | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == NULL_TAG:
            return None
        if not isinstance(node, yaml.ScalarNode) or node.tag not in FLOAT_TAGS:
            self.problem(node, field, f"expected a number between 0 and 1 or null, got {_kind(node)}")
            return None
        value = float(node.value)
        if not 0.0 <= value <= 1.0:
            self.problem(node, field, f"threshold must be between 0 and 1 (a cosine similarity), got {value}")
            return None
        return value

    def string_list(self, node: yaml.Node, field: str) -> tuple[str, ...]:
        if isinstance(node, yaml.ScalarNode) and node.tag == NULL_TAG:
            return ()
        if not isinstance(node, yaml.SequenceNode) or node.tag != SEQ_TAG:
            self.problem(node, field, f"expected a list, got {_kind(node)}")
            return ()
        items = [self.string(item, f"{field}[{i}]") for i, item in enumerate(node.value)]
        return tuple(item for item in items if item is not None)

    def read(self, root: yaml.Node) -> _FileContent | None:
        top = self.mapping(root, "-", TOP_KEYS)
        if top is None:
            return None
        if "version" not in top:
            self.problem(root, "version", "missing (write `version: 1` at the top)")
        else:
            version_node = top["version"][1]
            if not (isinstance(version_node, yaml.ScalarNode) and version_node.value == "1"):
                self.problem(version_node, "version", "unsupported version (this faqbot reads version 1)")
        content = _FileContent([])
        if "defaults" in top:
            self.defaults(top["defaults"][1], content)
        if "faqs" not in top:
            self.problem(root, "faqs", "missing (a list of FAQ entries)")
            return None
        faqs_node = top["faqs"][1]
        if not isinstance(faqs_node, yaml.SequenceNode) or faqs_node.tag != SEQ_TAG:
            self.problem(faqs_node, "faqs", f"expected a list, got {_kind(faqs_node)}")
            return None
        faqs = [self.faq(node, i) for i, node in enumerate(faqs_node.value)]
        content.faqs = [f for f in faqs if f is not None]
        content.references = self.references
        return content

    def defaults(self, node: yaml.Node, content: _FileContent) -> None:
        """The file's `defaults:` mapping (null or absent: none)."""
        if isinstance(node, yaml.ScalarNode) and node.tag == NULL_TAG:
            return
        defaults = self.mapping(node, "defaults", DEFAULT_KEYS)
        if not defaults:
            return
        if "threshold" in defaults:
            content.default_threshold = self.number(defaults["threshold"][1], "defaults.threshold")
        if "handoff_phrases" in defaults:
            content.handoff_phrases = self.string_list(defaults["handoff_phrases"][1], "defaults.handoff_phrases")

    def faq(self, node: yaml.Node, index: int) -> FAQ | None:
        field = f"faqs[{_peek_id(node) or index}]"  # name the entry by its id when it has one
        entry = self.mapping(node, field, FAQ_KEYS)
        if entry is None:
            return None
        before = len(self.problems)
        for key in REQUIRED_FAQ_KEYS:
            if key not in entry:
                self.problem(node, f"{field}.{key}", "missing (required)")
        faq_id = self.string(entry["id"][1], f"{field}.id") if "id" in entry else None
        if faq_id is not None and not ID_PATTERN.match(faq_id):
            self.problem(entry["id"][1], f"{field}.id", "bad id: use 1-64 of A-Z a-z 0-9 _ . -")
        question = self.string(entry["question"][1], f"{field}.question") if "question" in entry else None
        answer = self.string(entry["answer"][1], f"{field}.answer") if "answer" in entry else None
        paraphrases = self.string_list(entry["paraphrases"][1], f"{field}.paraphrases") if "paraphrases" in entry else ()
        tags = self.string_list(entry["tags"][1], f"{field}.tags") if "tags" in entry else ()
        threshold = self.number(entry["threshold"][1], f"{field}.threshold") if "threshold" in entry else None
        related = self.related(entry["related"][1], f"{field}.related", faq_id) if "related" in entry else ()
        by_channel = self.channel_answers(entry["channel_answers"][1], f"{field}.channel_answers") \
            if "channel_answers" in entry else ()
        valid_from, valid_to = self.window(entry, field)
        if len(self.problems) > before or faq_id is None or question is None or answer is None:
            return None
        return FAQ(
            id=faq_id,
            question=question,
            answer=answer,
            paraphrases=tuple(dict.fromkeys(p for p in paraphrases if p != question)),
            tags=tags,
            threshold=threshold,
            source=Path(self.name),
            line=node.start_mark.line + 1,
            related=related,
            channel_answers=by_channel,
            valid_from=valid_from,
            valid_to=valid_to,
        )

    def when(self, node: yaml.Node, field: str) -> date | datetime | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == NULL_TAG:
            return None
        if isinstance(node, yaml.ScalarNode) and node.tag in (STR_TAG, TIMESTAMP_TAG):
            with contextlib.suppress(ValueError):  # not a date: reported below, with the line
                return parse_when(node.value)
        self.problem(node, field, f"expected a date (2026-01-31) or an ISO datetime (2026-01-31T18:00:00+08:00), "
                                  f"got {_kind(node)}")
        return None

    def window(self, entry: dict[str, tuple[yaml.Node, yaml.Node]], field: str,
               ) -> tuple[date | datetime | None, date | datetime | None]:
        """`valid_from` and `valid_to`; a window that ends before it starts is refused."""
        start = self.when(entry["valid_from"][1], f"{field}.valid_from") if "valid_from" in entry else None
        end = self.when(entry["valid_to"][1], f"{field}.valid_to") if "valid_to" in entry else None
        if start is not None and end is not None:
            # Dates and naive times are read in FAQBOT_TIMEZONE when answering; any one zone orders them alike
            # unless only one side names an offset, where UTC is as good a reading as any.
            first, last = FAQ("-", "-", "-", valid_from=start, valid_to=end).window(UTC)
            if first is not None and last is not None and last <= first:
                self.problem(entry["valid_to"][1], f"{field}.valid_to",
                             f"{end.isoformat()} is before valid_from {start.isoformat()}")
        return start, end

    def channel_answers(self, node: yaml.Node, field: str) -> tuple[tuple[str, str], ...]:
        """`{channel: answer}` for known channels only (a typo would silently never be used)."""
        if isinstance(node, yaml.ScalarNode) and node.tag == NULL_TAG:
            return ()
        entries = self.mapping(node, field, set(KNOWN_CHANNELS))
        if entries is None:
            return ()
        answers = ((channel, self.string(value, f"{field}.{channel}")) for channel, (_, value) in entries.items())
        return tuple((channel, answer) for channel, answer in answers if answer is not None)

    def related(self, node: yaml.Node, field: str, faq_id: str | None) -> tuple[str, ...]:
        """FAQ ids to suggest after this answer; each is checked against the whole KB by `load_kb`."""
        ids = self.string_list(node, field)
        if not isinstance(node, yaml.SequenceNode):
            return ids
        out: list[str] = []
        for i, item in enumerate(node.value):
            target = item.value.strip() if isinstance(item, yaml.ScalarNode) else ""
            if not target or target not in ids:
                continue  # string_list has reported it
            line = item.start_mark.line + 1
            if target == faq_id:
                self.problem(item, f"{field}[{i}]", "an FAQ cannot be related to itself")
            elif target in out:
                self.problem(item, f"{field}[{i}]", f"{target!r} is listed twice")
            else:
                out.append(target)
                self.references.append(_Reference(self.name, line, f"{field}[{i}]", target))
        return tuple(out)


def _peek_id(node: yaml.Node) -> str | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == "id" and isinstance(value, yaml.ScalarNode):
                return value.value.strip()[:64] or None
    return None


def _kind(node: yaml.Node) -> str:
    """A short human description of what a node is, for 'expected X, got Y' messages."""
    if node.tag not in PLAIN_TAGS:
        return f"a value with unsupported tag {node.tag!r}"[:100]
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    kind = node.tag.rsplit(":", 1)[-1]
    return f"{kind} {node.value!r}"[:60]
