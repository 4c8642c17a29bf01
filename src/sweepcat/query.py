"""The parameter query language, for people: parsed, validated, evaluated column-wise.

    tenDq > 1 and F2_dd < 3
    soc_c in (1, 2)
    tenDq between 1 and 2.5 and not (xoffset >= 4 or huid == "NiPS3_random_rank0000_0003")

Grammar (keywords case-insensitive):

    expr    := term ("or" term)*
    term    := factor ("and" factor)*
    factor  := "not" factor | "(" expr ")" | test
    test    := NAME op value | NAME ["not"] "in" "(" value ("," value)* ")" | NAME "between" value "and" value
    op      := "<" | "<=" | ">" | ">=" | "==" | "=" | "!="
    value   := number | "string" | 'string' | true | false

A query is evaluated on numpy columns; nothing is ever pasted into SQL.
Shared by the server (search routes) and the client (direct catalog access).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Union

import numpy as np

from .errors import SweepcatError

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<op><=|>=|==|!=|<|>|=)
  | (?P<punct>[(),])
  | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
""", re.X)
KEYWORDS = {"and", "or", "not", "in", "between", "true", "false"}
# Limits, so that no query costs the server more than a quick answer (each is named when exceeded).
MAX_LENGTH = 10_000  # characters
MAX_DEPTH = 32  # nested parentheses and `not`s
MAX_TESTS = 1_000  # comparisons, memberships and ranges
MAX_IN_VALUES = 10_000  # values in one `in (...)` list


class QueryError(SweepcatError):
    """A query that cannot be parsed or names an unknown parameter (HTTP 400)."""


@dataclass(frozen=True)
class Compare:
    name: str
    op: str  # < <= > >= == !=
    value: Any


@dataclass(frozen=True)
class Member:
    name: str
    values: tuple[Any, ...]
    negated: bool = False


@dataclass(frozen=True)
class Between:
    name: str
    low: Any
    high: Any


@dataclass(frozen=True)
class Not:
    item: "Node"


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and" | "or"
    items: tuple["Node", ...]


Node = Union[Compare, Member, Between, Not, BoolOp]


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            shown = text if len(text) <= 200 else text[:200] + "..."
            raise QueryError(f"query {shown!r}: unexpected character {text[pos]!r} at position {pos}",
                             "write tests like `tenDq > 1 and F2_dd < 3`, `1 < tenDq < 2`, `soc_c in (1, 2)`, "
                          "`x between 1 and 2`")
        kind = m.lastgroup
        if kind != "ws":
            value = m.group()
            if kind == "name" and value.lower() in KEYWORDS:
                kind, value = "kw", value.lower()
            out.append((kind, value, pos))
        pos = m.end()
    return out


def _limit(what: str, limit: int, hint: str) -> QueryError:
    return QueryError(f"query too complex: more than {limit:,} {what}", hint)


class _Parser:
    def __init__(self, text: str):
        if len(text) > MAX_LENGTH:
            raise QueryError(f"query too long: {len(text):,} characters, the limit is {MAX_LENGTH:,}",
                             "shorten it; for long lists of keys use `key in (...)` on fewer keys per query")
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0
        self.tests = 0

    def fail(self, what: str) -> QueryError:
        at = self.toks[self.i][2] if self.i < len(self.toks) else len(self.text)
        shown = self.text if len(self.text) <= 200 else self.text[:200] + "..."
        return QueryError(f"query {shown!r}: {what} at position {at}",
                          "write tests like `tenDq > 1 and F2_dd < 3`, `1 < tenDq < 2`, `soc_c in (1, 2)`, "
                          "`x between 1 and 2`")

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i][:2] if self.i < len(self.toks) else None

    def take(self, kind: str, value: str | None = None) -> str:
        tok = self.peek()
        if tok is None or tok[0] != kind or (value is not None and tok[1] != value):
            want = value or kind
            got = "the end" if tok is None else repr(tok[1])
            raise self.fail(f"expected {want}, found {got}")
        self.i += 1
        return tok[1]

    def parse(self) -> Node:
        if not self.toks:
            raise QueryError("empty query", "e.g. `tenDq > 1`; to match everything, pass no query")
        node = self.expr()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return node

    def expr(self) -> Node:
        items = [self.term()]
        while self.peek() == ("kw", "or"):
            self.i += 1
            items.append(self.term())
        return items[0] if len(items) == 1 else BoolOp("or", tuple(items))

    def term(self) -> Node:
        items = [self.factor()]
        while self.peek() == ("kw", "and"):
            self.i += 1
            items.append(self.factor())
        return items[0] if len(items) == 1 else BoolOp("and", tuple(items))

    def factor(self) -> Node:
        tok = self.peek()
        if tok in (("kw", "not"), ("punct", "(")):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _limit("nested parentheses or `not`s", MAX_DEPTH, "flatten the query: `not` twice cancels, "
                             "and `a and (b and c)` is `a and b and c`")
            self.i += 1
            if tok == ("kw", "not"):
                node: Node = Not(self.factor())
            else:
                node = self.expr()
                self.take("punct", ")")
            self.depth -= 1
            return node
        self.tests += 1
        if self.tests > MAX_TESTS:
            raise _limit("comparisons", MAX_TESTS, "use `in (...)` or `between` instead of many comparisons")
        return self.test()

    def value(self) -> Any:
        tok = self.peek()
        if tok is None:
            raise self.fail("expected a value, found the end")
        kind, text = tok
        self.i += 1
        if kind == "num":
            return self.number(text)
        if kind == "str":
            return re.sub(r"\\(.)", r"\1", text[1:-1])
        if kind == "kw" and text in ("true", "false"):
            return text == "true"
        self.i -= 1
        raise self.fail(f"expected a value, found {text!r}")

    def number(self, text: str) -> int | float:
        """Integers stay exact within int64; anything else is a float, which must be finite."""
        if not re.search(r"[.eE]", text) and len(text) <= 19:
            value = int(text)
            if -(2**63) <= value < 2**63:
                return value
        value = float(text)
        if not np.isfinite(value):
            self.i -= 1
            raise self.fail(f"number {text[:40]}{'...' if len(text) > 40 else ''} is out of range (beyond "
                            f"+-{np.finfo(np.float64).max:.3g})")
        return value

    def test(self) -> Node:
        if self.peek() is not None and self.peek()[0] in ("num", "str"):  # type: ignore[index]
            return self.chained()
        name = self.take("name")
        tok = self.peek()
        if tok is None:
            raise self.fail(f"expected an operator after {name!r}")
        if tok[0] == "op":
            self.i += 1
            op = "==" if tok[1] == "=" else tok[1]
            return Compare(name, op, self.value())
        negated = False
        if tok == ("kw", "not"):
            self.i += 1
            negated = True
            tok = self.peek()
        if tok == ("kw", "in"):
            self.i += 1
            self.take("punct", "(")
            values = [self.value()]
            while self.peek() == ("punct", ","):
                self.i += 1
                values.append(self.value())
                if len(values) > MAX_IN_VALUES:
                    raise _limit("values in one `in (...)` list", MAX_IN_VALUES, "split the list over queries")
            self.take("punct", ")")
            return Member(name, tuple(values), negated)
        if tok == ("kw", "between") and not negated:
            self.i += 1
            low = self.value()
            self.take("kw", "and")
            return Between(name, low, self.value())
        raise self.fail(f"expected an operator, `in` or `between` after {name!r}")


    def chained(self) -> Node:
        """``1 < tenDq``, ``1 < tenDq <= 2``: a value first, as Python writes ranges."""
        low = self.value()
        tok = self.peek()
        if tok is None or tok[0] != "op":
            raise self.fail("expected a comparison after a value (e.g. `1 < tenDq < 2`)")
        self.i += 1
        first = Compare(self.take("name"), _MIRRORED["==" if tok[1] == "=" else tok[1]], low)
        tok = self.peek()
        if tok is None or tok[0] != "op":
            return first
        self.i += 1
        self.tests += 1
        return BoolOp("and", (first, Compare(first.name, "==" if tok[1] == "=" else tok[1], self.value())))


_MIRRORED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def parse(text: str) -> Node:
    return _Parser(text).parse()


def names(node: Node) -> set[str]:
    if isinstance(node, (Compare, Member, Between)):
        return {node.name}
    if isinstance(node, Not):
        return names(node.item)
    return set().union(*(names(i) for i in node.items))


def check_names(node: Node, known: list[str], text: str = "") -> None:
    unknown = sorted(names(node) - set(known))
    if unknown:
        raise QueryError(f"query {text!r}: unknown parameter(s) {', '.join(unknown)}",
                         f"valid parameters: {', '.join(known)}")


def from_keywords(**conditions: Any) -> str:
    """``find(tenDq=(1, 2), soc_c=[1, 2], huid="x")`` -> query text (tuples are inclusive ranges, None open)."""
    parts = []
    for name, cond in conditions.items():
        if isinstance(cond, tuple) and len(cond) != 2:
            raise QueryError(f"{name}={cond!r}: a tuple is a range (low, high) and takes two values",
                             f"write {name}=(low, high) for a range (None leaves a side open), "
                             f"or {name}=[a, b, c] for a list of values")
        if isinstance(cond, tuple):
            low, high = cond
            if low is not None:
                parts.append(f"{name} >= {_literal(low)}")
            if high is not None:
                parts.append(f"{name} <= {_literal(high)}")
        elif isinstance(cond, (list, set, frozenset)):
            parts.append(f"{name} in ({', '.join(_literal(v) for v in cond)})")
        else:
            parts.append(f"{name} == {_literal(cond)}")
    return " and ".join(parts)


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return repr(float(value)) if isinstance(value, (float, np.floating)) else str(int(value))
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


# --------------------------------------------------------------------------- evaluation


def _cmp(column: np.ndarray, op: str, value: Any) -> np.ndarray:
    if column.dtype.kind in "fiub" and isinstance(value, str):
        raise QueryError(f"cannot compare a number with the text {value!r}", "drop the quotes")
    if column.dtype.kind in "OUS" and not isinstance(value, str):
        value = str(value)
    with np.errstate(invalid="ignore"):
        if op == "<":
            return column < value
        if op == "<=":
            return column <= value
        if op == ">":
            return column > value
        if op == ">=":
            return column >= value
        if op == "==":
            return column == value
        return column != value


def evaluate(node: Node, columns: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    """Boolean mask of rows matching ``node``; NaN (null) never matches a comparison."""
    if isinstance(node, Compare):
        return np.asarray(_cmp(columns[node.name], node.op, node.value), dtype=bool)
    if isinstance(node, Member):
        col = columns[node.name]
        values = [str(v) for v in node.values] if col.dtype.kind in "OUS" else list(node.values)
        mask = np.isin(col, values)
        if node.negated:
            mask = ~mask
            if col.dtype.kind == "f":
                mask &= ~np.isnan(col)
        return mask
    if isinstance(node, Between):
        col = columns[node.name]
        return np.asarray(_cmp(col, ">=", node.low) & _cmp(col, "<=", node.high), dtype=bool)
    if isinstance(node, Not):
        return ~evaluate(node.item, columns, n)
    masks = [evaluate(i, columns, n) for i in node.items]
    out = masks[0].copy()
    for m in masks[1:]:
        if node.op == "and":
            out &= m
        else:
            out |= m
    return out


# --------------------------------------------------------------------------- cuts of a result
#
# A result can be cut without reading data: sorted by a parameter, shuffled with a seed, sliced. The cuts
# travel as one short text (``sort:tenDq;shuffle:7;slice:0:1000``) and are applied to the matching rows by
# ``apply_cuts`` on the server and in a local catalog alike, so both give the same rows in the same order.

MAX_CUTS = 16
CUTS_HINT = "write cuts as sort:NAME, sort:-NAME, shuffle:SEED, slice:START:STOP[:STEP] or take:I,J,..."
MAX_TAKE = 2_000  # positions in one take cut (a training batch; ~14 KB of URL)


@dataclass(frozen=True)
class Cut:
    kind: str  # "sort", "shuffle", "slice" or "take"
    args: tuple[Any, ...]

    def text(self) -> str:
        if self.kind == "take":
            return "take:" + ",".join(map(str, self.args))
        return ":".join([self.kind, *("" if a is None else str(a) for a in self.args)])


    def describe(self) -> str:
        """As a user would write it: ``[:100]``, ``shuffle(seed=3)``, ``sort_by(F2_dd, descending)``."""
        if self.kind == "slice":
            a, b, c = (*self.args, None)[:3]
            return "[" + ":".join("" if x is None else str(x) for x in ((a, b) if c is None else (a, b, c))) + "]"
        if self.kind == "shuffle":
            return f"shuffle(seed={self.args[0]})"
        if self.kind == "take":
            return f"take({len(self.args)} rows)"
        name = self.args[0]
        return f"sort_by({name.lstrip('-')}{', descending' if name.startswith('-') else ''})"


def cuts_text(cuts: tuple[Cut, ...]) -> str | None:
    return ";".join(c.text() for c in cuts) or None


def _int(text: str, what: str, cut: str) -> int | None:
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise QueryError(f"cut {cut!r}: {what} {text!r} is not an integer",
                         CUTS_HINT) from None


def parse_cuts(text: str | None) -> tuple[Cut, ...]:
    """``sort:NAME`` (``-NAME`` descending), ``shuffle:SEED``, ``slice:START:STOP[:STEP]``, ``take:I,J,...``
    (positions), joined by ``;``."""
    if not text:
        return ()
    if len(text) > MAX_LENGTH:
        raise _limit("cuts", MAX_LENGTH, "cut the result in fewer steps")
    cuts = []
    for part in text.split(";"):
        kind, _, rest = part.partition(":")
        if kind == "sort" and rest.lstrip("-"):
            cuts.append(Cut("sort", (rest,)))
        elif kind == "shuffle":
            seed = _int(rest, "seed", part)
            if seed is None or seed < 0:
                raise QueryError(f"cut {part!r}: the seed must be an integer >= 0", "e.g. shuffle:42")
            cuts.append(Cut("shuffle", (seed,)))
        elif kind == "take" and rest:
            positions = [_int(x, "position", part) for x in rest.split(",")]
            if any(p is None or not -2**62 < p < 2**62 for p in positions):
                raise QueryError(f"cut {part!r}: positions must be integers, none empty", "e.g. take:0,5,17")
            if len(positions) > MAX_TAKE:
                raise _limit("positions in a take cut", MAX_TAKE, "take fewer rows per request")
            cuts.append(Cut("take", tuple(positions)))
        elif kind == "slice" and 1 <= rest.count(":") <= 2:
            bounds = [_int(x, "bound", part) for x in rest.split(":")]
            if len(bounds) == 3 and bounds[2] == 0:
                raise QueryError(f"cut {part!r}: the step must not be 0", "e.g. slice:0:1000:2")
            cuts.append(Cut("slice", tuple(bounds)))
        else:
            raise QueryError(f"cut {part!r} is not understood",
                             CUTS_HINT)
    if len(cuts) > MAX_CUTS:
        raise _limit("cuts", MAX_CUTS, "cut the result in fewer steps")
    return tuple(cuts)


def apply_cuts(rows: np.ndarray, cuts: tuple[Cut, ...], columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """The rows of a result after its cuts, in order. Sorting is stable (ties keep their order), missing
    values (NaN) last in either direction."""
    for cut in cuts:
        if cut.kind == "slice":
            rows = rows[slice(*cut.args)]
        elif cut.kind == "shuffle":
            rows = rows[np.random.default_rng(cut.args[0]).permutation(len(rows))]
        elif cut.kind == "take":
            positions = np.asarray(cut.args, dtype=np.int64)
            if len(positions) and (positions.max() >= len(rows) or positions.min() < -len(rows)):
                raise QueryError(f"cut take: a position lies past the result's {len(rows)} rows",
                                 "take positions from 0 to len(result) - 1")
            rows = rows[positions]
        else:
            name = cut.args[0].lstrip("-")
            if name not in columns:
                raise QueryError(f"cannot sort by {name!r}: no such parameter",
                                 f"valid parameters: {', '.join(sorted(columns))}")
            values = columns[name][rows]
            descending = cut.args[0].startswith("-")
            if values.dtype.kind == "f":
                key = np.where(np.isnan(values), np.inf, -values if descending else values)
                order = np.argsort(key, kind="stable")
            else:  # integers by rank (exact past 2^53); text as strings; missing values last
                missing = np.array([v is None for v in values], dtype=bool) if values.dtype.kind == "O" \
                    else np.zeros(len(values), dtype=bool)
                ranked = values if values.dtype.kind != "O" else \
                    np.array(["" if v is None else str(v) for v in values], dtype=object)
                _, rank = np.unique(ranked, return_inverse=True)
                rank = np.where(missing, len(values), -rank if descending else rank)
                order = np.argsort(rank, kind="stable")
            rows = rows[order]
    return rows

