"""The golden questions beside a KB (`tests.yaml`): the one reader of that file.

    version: 1
    tests:
      - query: 能给我开张发票吗
        expected: invoice      # the FAQ that must answer it
      - query: 讲个笑话
        expected: null         # out of scope: no FAQ may answer it

The reload gate (admin.curation.rebuild) and `faqbot eval --queries tests.yaml` read it here, by the
same rules, so they can never disagree about one file: every entry needs a non-empty `query` and
an `expected` (an FAQ id, or null); anything else is a located problem (`KBError`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from faq.loader import KBError, KBProblem

GOLDEN_FILE = "tests.yaml"
_NULL_TAG = "tag:yaml.org,2002:null"


@dataclass(frozen=True)
class GoldenCase:
    query: str
    expected: str | None
    line: int


def golden_file(kb_path: Path) -> Path:
    """`tests.yaml` inside a KB directory, or next to a single-file KB."""
    kb_path = Path(kb_path)
    return (kb_path if kb_path.is_dir() else kb_path.parent) / GOLDEN_FILE


def load_golden(path: Path) -> list[GoldenCase]:
    """Read `tests: [{query, expected}]` (expected: an FAQ id, or null = must not match); KBError on problems."""
    name = str(path)
    try:
        root = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError) as exc:
        raise KBError([KBProblem(name, 0, "-", f"cannot read: {exc}")], subject=name) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise KBError([KBProblem(name, mark.line + 1 if mark else 0, "-", f"YAML syntax error: {exc.problem}")],
                      subject=name) from exc
    if not isinstance(root, yaml.MappingNode):
        raise KBError([KBProblem(name, 1, "-", "expected a mapping with `tests:`")], subject=name)
    top = {k.value: v for k, v in root.value if isinstance(k, yaml.ScalarNode)}
    tests = top.get("tests")
    if not isinstance(tests, yaml.SequenceNode):
        raise KBError([KBProblem(name, root.start_mark.line + 1, "tests", "missing or not a list")], subject=name)
    problems: list[KBProblem] = []
    cases = [case for i, node in enumerate(tests.value) if (case := _case(name, i, node, problems)) is not None]
    if problems:
        raise KBError(problems, subject=name)
    return cases


def _case(name: str, i: int, node: yaml.Node, problems: list[KBProblem]) -> GoldenCase | None:
    """One `{query, expected}` entry, or None with its problem appended."""
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.MappingNode):
        problems.append(KBProblem(name, line, f"tests[{i}]", "expected a mapping {query, expected}"))
        return None
    entry = {k.value: v for k, v in node.value if isinstance(k, yaml.ScalarNode)}
    query_node, expected_node = entry.get("query"), entry.get("expected")
    unknown = set(entry) - {"query", "expected"}
    if unknown:
        problems.append(KBProblem(name, line, f"tests[{i}]", f"unknown key(s): {', '.join(sorted(unknown))}"))
    if not isinstance(query_node, yaml.ScalarNode) or not query_node.value.strip():
        problems.append(KBProblem(name, line, f"tests[{i}].query", "missing or empty"))
        return None
    if "expected" not in entry:
        problems.append(KBProblem(name, line, f"tests[{i}].expected", "missing (an FAQ id, or null)"))
        return None
    if not isinstance(expected_node, yaml.ScalarNode):
        problems.append(KBProblem(name, line, f"tests[{i}].expected", "expected an FAQ id or null"))
        return None
    is_null = expected_node.tag == _NULL_TAG
    return GoldenCase(query_node.value.strip(), None if is_null else expected_node.value.strip(), line)
