"""The safe target-expression language of the acceptance registry (pure: stdlib only).

A registry row's ``target_expression`` is a condition over the run's metrics,
e.g. ``build_time_seconds < 30 and constraint_violations == 0``. It is parsed
with ``ast.parse(text, mode="eval")`` and accepted only if every node is on
this allow-list; it is evaluated by walking that tree here, never with
``eval``, ``exec`` or ``compile`` (``tests/acceptance/test_purity.py`` checks
this in a process where those builtins raise):

- ``and``, ``or``, ``not`` over conditions (short-circuit, as in Python, so
  ``n > 0 and total / n < 2`` never divides by zero);
- comparisons ``< <= > >= == !=`` between numbers, chained (``0 < x <= 1``);
- arithmetic ``+ - * /``, unary ``-`` and ``+``;
- metric names: ASCII identifiers (``[A-Za-z_][A-Za-z0-9_]*``, not starting
  with ``__``, not ``abs``/``min``/``max``); a metric whose MLflow key is not an
  identifier (``loss/val``) can be required but not used in an expression;
- number literals (int, float, scientific notation) and ``True``/``False``;
- the calls ``abs(x)``, ``min(a, b, ...)`` and ``max(a, b, ...)`` (positional
  arguments only, at least two for ``min``/``max``).

Anything else (attributes, subscripts, strings, ``**``, ``//``, ``%``, bit
operators, ``in``/``is``, lambdas, comprehensions, conditional expressions,
``:=``, f-strings, any other call) is an :class:`AcceptanceError` naming the
construct and its column (1-based). An expression is at most
:data:`MAX_EXPRESSION_LENGTH` characters and :data:`MAX_EXPRESSION_NODES`
nodes, and must be a condition, not a bare number.

Numeric edge cases, decided once here:

- NaN: every comparison with a NaN operand is false, *including* ``!=`` (so a
  NaN metric never satisfies a comparison; note that ``not (x > 1)`` is then
  true). ``min``/``max`` return NaN when any argument is NaN.
- Division by zero and overflow (e.g. a huge integer literal mixed with a
  float) raise ``ArithmeticError`` from :meth:`TargetExpression.evaluate`;
  :func:`formula_foundry.acceptance.evaluate` turns that into a failing
  criterion with the reason, never a crash.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from formula_foundry.errors import AcceptanceError

__all__ = [
    "MAX_EXPRESSION_LENGTH",
    "MAX_EXPRESSION_NODES",
    "TargetExpression",
    "parse_expression",
]

#: Longest target expression accepted, in characters.
MAX_EXPRESSION_LENGTH = 1000

#: Most expression nodes (names, numbers, operations, calls) in one target expression.
MAX_EXPRESSION_NODES = 256

_FUNCTIONS = ("abs", "min", "max")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_BIN_OPS: dict[type[ast.operator], str] = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/",
}
_CMP_OPS: dict[type[ast.cmpop], str] = {
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
}
_REJECTED_OPS: dict[type[ast.AST], str] = {
    ast.Pow: "operator '**'", ast.FloorDiv: "operator '//'", ast.Mod: "operator '%'",
    ast.MatMult: "operator '@'", ast.LShift: "operator '<<'", ast.RShift: "operator '>>'",
    ast.BitOr: "operator '|'", ast.BitAnd: "operator '&'", ast.BitXor: "operator '^'",
    ast.Invert: "operator '~'", ast.In: "comparison 'in'", ast.NotIn: "comparison 'not in'",
    ast.Is: "comparison 'is'", ast.IsNot: "comparison 'is not'",
}
_REJECTED_NODES: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access ('.')",
    ast.Subscript: "subscript ('[...]')",
    ast.Lambda: "lambda",
    ast.ListComp: "list comprehension",
    ast.SetComp: "set comprehension",
    ast.DictComp: "dict comprehension",
    ast.GeneratorExp: "generator expression",
    ast.IfExp: "conditional expression ('x if c else y')",
    ast.NamedExpr: "assignment expression (':=')",
    ast.JoinedStr: "f-string",
    ast.FormattedValue: "f-string",
    ast.List: "list display",
    ast.Tuple: "tuple",
    ast.Set: "set display",
    ast.Dict: "dict display",
    ast.Starred: "starred argument ('*')",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield from",
    ast.Slice: "slice",
}

_NUMBER = "number"
_CONDITION = "condition"


def _where(node: ast.AST) -> str:
    """' at col N' (1-based); for x.y and x[i], the column of the '.' or '['."""
    col = getattr(node, "col_offset", None)
    if isinstance(node, (ast.Attribute, ast.Subscript)) and node.value.end_col_offset is not None:
        col = node.value.end_col_offset
    return f" at col {col + 1}" if col is not None else ""


class _Checker:
    """Walks a parsed expression once: allow-list, kinds (number/condition), metric names."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.names: list[str] = []

    def fail(self, what: str, node: ast.AST) -> AcceptanceError:
        return AcceptanceError(f"{what} is not allowed{_where(node)} in expression {self.source!r}")

    def kind(self, node: ast.AST) -> str:
        if isinstance(node, ast.BoolOp):
            for value in node.values:
                self.expect(value, _CONDITION, "an operand of 'and'/'or'")
            return _CONDITION
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                self.expect(node.operand, _CONDITION, "the operand of 'not'")
                return _CONDITION
            if isinstance(node.op, (ast.USub, ast.UAdd)):
                self.expect(node.operand, _NUMBER, "the operand of unary '-'/'+'")
                return _NUMBER
            raise self.fail(_REJECTED_OPS.get(type(node.op), type(node.op).__name__), node)
        if isinstance(node, ast.Compare):
            for op in node.ops:
                if type(op) not in _CMP_OPS:
                    raise self.fail(_REJECTED_OPS.get(type(op), type(op).__name__), node)
            for operand in (node.left, *node.comparators):
                self.expect(operand, _NUMBER, "a compared value")
            return _CONDITION
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BIN_OPS:
                raise self.fail(_REJECTED_OPS.get(type(node.op), type(node.op).__name__), node)
            self.expect(node.left, _NUMBER, f"an operand of '{_BIN_OPS[type(node.op)]}'")
            self.expect(node.right, _NUMBER, f"an operand of '{_BIN_OPS[type(node.op)]}'")
            return _NUMBER
        if isinstance(node, ast.Name):
            self.check_name(node)
            if node.id not in self.names:
                self.names.append(node.id)
            return _NUMBER
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool):
                return _CONDITION
            if isinstance(value, (int, float)):
                return _NUMBER
            what = {str: "string literal", bytes: "bytes literal", complex: "complex literal"}.get(
                type(value), f"constant {value!r}")
            raise self.fail(what, node)
        if isinstance(node, ast.Call):
            return self.check_call(node)
        raise self.fail(_REJECTED_NODES.get(type(node), f"construct '{type(node).__name__}'"), node)

    def expect(self, node: ast.AST, wanted: str, role: str) -> None:
        got = self.kind(node)
        if got != wanted:
            article = "a number" if wanted == _NUMBER else "a condition"
            raise AcceptanceError(
                f"{role} must be {article}, got a {got}{_where(node)} in expression {self.source!r}")

    def check_name(self, node: ast.Name) -> None:
        name = node.id
        if not _NAME_RE.fullmatch(name):
            raise self.fail(f"name {name!r} (metric names are ASCII identifiers)", node)
        if name.startswith("__"):
            raise self.fail(f"name {name!r} (names starting with '__')", node)
        if name in _FUNCTIONS:
            raise self.fail(f"'{name}' without a call (it is a function, not a metric)", node)

    def check_call(self, node: ast.Call) -> str:
        func = node.func
        if not isinstance(func, ast.Name):
            self.kind(func)  # names the real culprit: x.f(), x[0](), (lambda: 0)() ...
            raise self.fail("call to a computed function (only abs, min, max)", node)
        if func.id not in _FUNCTIONS:
            raise self.fail(f"call to '{func.id}' (only abs, min, max)", node)
        if node.keywords:
            raise self.fail(f"keyword argument to '{func.id}'", node.keywords[0].value)
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.fail(_REJECTED_NODES[ast.Starred], arg)
        count = len(node.args)
        if func.id == "abs" and count != 1:
            raise AcceptanceError(
                f"abs() takes exactly 1 argument, got {count}{_where(node)} in expression {self.source!r}")
        if func.id != "abs" and count < 2:
            raise AcceptanceError(
                f"{func.id}() takes at least 2 arguments, got {count}{_where(node)} "
                f"in expression {self.source!r}")
        for arg in node.args:
            self.expect(arg, _NUMBER, f"an argument of '{func.id}'")
        return _NUMBER


@dataclass(frozen=True)
class TargetExpression:
    """A parsed, allow-listed target expression; build it with :func:`parse_expression`."""

    source: str
    metric_names: tuple[str, ...]
    _tree: ast.Expression = field(repr=False, compare=False)

    def evaluate(self, metrics: Mapping[str, float]) -> bool:
        """Evaluate against numeric metric values.

        Raises ``KeyError`` for a metric it names that ``metrics`` lacks, and
        ``ArithmeticError`` (``ZeroDivisionError``, ``OverflowError``) for
        arithmetic that has no value; :func:`evaluate` turns both into a
        reported outcome.
        """
        return bool(_eval(self._tree.body, metrics))

    def clauses(self) -> tuple[tuple[str, TargetExpression], ...]:
        """The top-level ``and`` operands as (source text, expression); one item otherwise."""
        body = self._tree.body
        if not (isinstance(body, ast.BoolOp) and isinstance(body.op, ast.And)):
            return ((self.source, self),)
        out = []
        for value in body.values:
            text = ast.get_source_segment(self.source, value) or ast.dump(value)
            names = tuple(n for n in self.metric_names if _mentions(value, n))
            out.append((text, TargetExpression(text, names, ast.Expression(body=value))))
        return tuple(out)


def _mentions(node: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node))


def _syntax_where(exc: SyntaxError, text: str) -> str:
    if exc.offset is None:
        return ""
    lines = text.splitlines() or [""]
    line = exc.lineno or 1
    if exc.offset <= 0 or line > len(lines) or exc.offset > len(lines[line - 1]):
        return " at the end"
    return f" at col {exc.offset}" if len(lines) == 1 else f" at line {line} col {exc.offset}"


def parse_expression(source: str) -> TargetExpression:
    """Parse and check a target expression against the allow-list (see the module docstring).

    Raises :class:`AcceptanceError` naming the offending construct and its column.
    """
    if not isinstance(source, str):
        raise AcceptanceError(f"target expression must be a string, got {type(source).__name__}")
    text = source.strip()
    if not text:
        raise AcceptanceError("target expression is empty")
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise AcceptanceError(
            f"target expression is {len(text)} characters long, more than {MAX_EXPRESSION_LENGTH}")
    if not text.isascii():
        col = next(i for i, ch in enumerate(text) if not ch.isascii()) + 1
        raise AcceptanceError(f"non-ASCII character at col {col} in expression {text!r} "
                              "(metric names are ASCII identifiers)")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        where = _syntax_where(exc, text)
        raise AcceptanceError(f"expression {text!r} does not parse{where}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise AcceptanceError(f"expression {text!r} does not parse: {exc}") from None
    # Count iteratively (ast.walk uses a queue) before the recursive check, which bounds its depth.
    count = sum(1 for node in ast.walk(tree.body) if isinstance(node, ast.expr))
    if count > MAX_EXPRESSION_NODES:
        raise AcceptanceError(
            f"expression {text!r} has {count} nodes, more than {MAX_EXPRESSION_NODES}")
    checker = _Checker(text)
    kind = checker.kind(tree.body)
    if kind != _CONDITION:
        raise AcceptanceError(
            f"expression {text!r} is a number, not a condition; compare it (e.g. '... > 0')")
    return TargetExpression(text, tuple(checker.names), tree)


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _compare(op: ast.cmpop, left: float, right: float) -> bool:
    if _is_nan(left) or _is_nan(right):
        return False  # NaN never satisfies a comparison, != included (module docstring)
    if isinstance(op, ast.Lt):
        return left < right
    if isinstance(op, ast.LtE):
        return left <= right
    if isinstance(op, ast.Gt):
        return left > right
    if isinstance(op, ast.GtE):
        return left >= right
    if isinstance(op, ast.Eq):
        return left == right
    return left != right  # ast.NotEq: the checker admitted nothing else


def _eval(node: ast.expr, metrics: Mapping[str, float]) -> float | bool:
    # Only node types admitted by _Checker reach here; anything else is a bug, said loudly.
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return metrics[node.id]
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            return all(_eval(v, metrics) for v in node.values)
        return any(_eval(v, metrics) for v in node.values)
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand, metrics)
        if isinstance(node.op, ast.Not):
            return not operand
        return -operand if isinstance(node.op, ast.USub) else +operand
    if isinstance(node, ast.Compare):
        left = _eval(node.left, metrics)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _eval(comparator, metrics)
            if not _compare(op, left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, metrics), _eval(node.right, metrics)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        return left / right
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        args = [_eval(a, metrics) for a in node.args]
        if node.func.id == "abs":
            return abs(args[0])
        if any(_is_nan(a) for a in args):
            return math.nan
        return min(args) if node.func.id == "min" else max(args)
    raise TypeError(f"unchecked node {type(node).__name__} in a target expression")
