"""formula_foundry.acceptance is pure: it never imports MLflow and never evaluates code.

Checked by behaviour, not by reading the source: a fresh interpreter (the
harness below) makes ``mlflow`` and ``sqlalchemy`` unimportable and replaces
``builtins.eval``/``exec``/``compile`` with guards, *then* imports the package
and judges runs against registries. Every refused call is recorded, so one that
the code under test catches and swallows still fails the run. The negative
controls prove the harness sees a violation however it is reached.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from formula_foundry.acceptance import REGISTRY_COLUMNS
from tests.conftest import REPO, subprocess_env

SHIPPED_REGISTRY = REPO / "config" / "acceptance_criteria_registry.csv"

# The guards let through exactly three kinds of caller, each of which runs no registry text:
# - the import system (``importlib._bootstrap``/``_external``) compiling and executing a module's code;
# - while the package is being imported only: ``dataclasses``, ``collections`` (namedtuple) and
#   ``typing`` (NamedTuple's string annotations) building classes from their own generated source;
# - ``compile(..., flags=ast.PyCF_ONLY_AST)``, which is ``ast.parse``: it builds a tree, never code.
HARNESS = '''\
import _frozen_importlib
import _frozen_importlib_external
import ast
import builtins
import collections
import dataclasses
import json
import sys
import typing

BLOCKED = ("mlflow", "sqlalchemy")
violations = []
phase = "import"


class RefuseBlocked:
    """A meta-path finder consulted before all others: a blocked top-level name is refused."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            violations.append(f"import {{name}}")
            raise ModuleNotFoundError(f"purity harness: import of {{name!r}} refused", name=name)
        return None


for loaded in [m for m in sys.modules if m.partition(".")[0] in BLOCKED]:
    del sys.modules[loaded]
sys.meta_path.insert(0, RefuseBlocked())

IMPORT_SYSTEM = (vars(_frozen_importlib), vars(_frozen_importlib_external))
CLASS_BUILDERS = (vars(dataclasses), vars(collections), vars(typing))


def guard(name, real):
    def refused(*args, **kwargs):
        caller = sys._getframe(1).f_globals
        if any(caller is g for g in IMPORT_SYSTEM):
            return real(*args, **kwargs)
        if phase == "import" and any(caller is g for g in CLASS_BUILDERS):
            return real(*args, **kwargs)
        flags = args[3] if len(args) > 3 else kwargs.get("flags", 0)
        if name == "compile" and flags & ast.PyCF_ONLY_AST:
            return real(*args, **kwargs)
        violations.append(f"{{name}}() from {{caller.get('__name__')}}")
        raise RuntimeError(f"purity harness: {{name}}() refused")
    return refused


for _name in ("eval", "exec", "compile"):
    setattr(builtins, _name, guard(_name, getattr(builtins, _name)))

import formula_foundry.acceptance  # noqa: E402 - after the guards, on purpose

phase = "evaluate"


def main():
{body}


error = None
try:
    main()
except BaseException as exc:  # noqa: BLE001 - reported below
    error = f"{{type(exc).__name__}}: {{exc}}"
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
print(json.dumps({{"violations": violations, "error": error, "loaded": loaded}}))
sys.exit(0 if not (violations or error or loaded) else 1)
'''

# A realistic use: load the shipped registry and one exercising every construct, judge runs.
REALISTIC = '''\
import math
from pathlib import Path

from formula_foundry.acceptance import evaluate, load_registry, parse_expression
from formula_foundry.errors import AcceptanceError

shipped = load_registry(Path(sys.argv[1]))
runs = [
    ("M1-coupon-build", {"build_time_seconds": 12.0, "constraint_violations": 0.0}, "PASS"),
    ("M1-coupon-build", {"build_time_seconds": 45.0, "constraint_violations": 0.0}, "FAIL"),
    ("M1-coupon-build", {"build_time_seconds": 12.0}, "MISSING"),
    ("M2-sim-insertion-loss", {"insertion_loss_db": -0.5}, "PASS"),
    ("M2-sim-insertion-loss", {"insertion_loss_db": math.nan}, "FAIL"),
    ("M2-sim-return-loss", {"return_loss_db": -12.0, "sim_time_seconds": 7200.0}, "FAIL"),
    ("M4-macromodel-fit", {"max_abs_error_db": 0.05, "passivity_violations": 0}, "PASS"),
]
for task, metrics, expected in runs:
    got = shipped.evaluate_run(task, metrics, run_id="run-1")
    assert got.status == expected, (task, metrics, got)

every = load_registry(Path(sys.argv[2]))
assert every.evaluate_run("T-all", {"a": 0.5, "b": 0.6, "c": 2.0, "loss/val": 1.0}).passed
assert every.evaluate_run("T-all", {"a": 0.5, "b": 0.6, "c": 20.0, "loss/val": 1.0}).status == "FAIL"
divided = every.evaluate_run("T-div", {"a": 1.0, "b": 0.0})
assert divided.status == "FAIL" and "ZeroDivisionError" in divided.reason, divided
overflow = evaluate(every.criterion("T-big"), {"a": 1.5})
assert overflow.status == "FAIL" and "OverflowError" in overflow.reason, overflow
for hostile in ("__import__('os').system('true') == 0", "eval('1') > 0", "().__class__ > 0"):
    try:
        parse_expression(hostile)
    except AcceptanceError:
        continue
    raise AssertionError(f"accepted {hostile!r}")
'''


def every_construct_registry(tmp_path: Path) -> Path:
    path = tmp_path / "every.csv"
    big = "9" * 400
    path.write_text("\n".join([
        ",".join(REGISTRY_COLUMNS),
        'T-all,M3,a;b;c;loss/val,"0 < a <= 1 and abs(a - b) < 0.5 and min(a, b, c) >= -1 '
        'and max(a, b) * 2 / 4 - 1 != 3 and not (c > 10) and -a < +b or False",every construct',
        "T-div,m3,a;b,a / b > 1,division by zero",
        f"T-big,3,a,a * {big} > 0,overflow",
    ]) + "\n", encoding="utf-8")
    return path


def run_harness(tmp_path: Path, body: str) -> tuple[int, dict]:
    script = tmp_path / "purity_harness.py"
    script.write_text(HARNESS.format(body=textwrap.indent(body, "    ")), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script), str(SHIPPED_REGISTRY), str(every_construct_registry(tmp_path))],
        capture_output=True, text=True, timeout=120, env=subprocess_env(), cwd=tmp_path,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no report from the harness (rc {proc.returncode}): {proc.stderr}"
    return proc.returncode, json.loads(lines[-1])


def test_acceptance_never_imports_mlflow_nor_evaluates_code(tmp_path: Path) -> None:
    """Importing the package and judging runs of two registries needs neither MLflow nor eval/exec/compile."""
    code, report = run_harness(tmp_path, REALISTIC)
    assert report == {"violations": [], "error": None, "loaded": []}
    assert code == 0


@pytest.mark.parametrize("body, violation", [
    ("import mlflow", "import mlflow"),
    ("import importlib\nimportlib.import_module('mlflow.tracking')", "import mlflow"),
    ("try:\n    import sqlalchemy.orm\nexcept ImportError:\n    pass", "import sqlalchemy"),
    ("import builtins\nbuiltins.eval('1 + 1')", "eval() from __main__"),
    ("getattr(__import__('builtins'), 'exec')('x = 1')", "exec() from __main__"),
    ("try:\n    eval('1')\nexcept Exception:\n    pass", "eval() from __main__"),
    ("compile('1', '<s>', 'eval')", "compile() from __main__"),
    # An evaluator that compiles the checked tree and evals it (what the package must never do):
    ("from pathlib import Path\n"
     "from formula_foundry.acceptance import TargetExpression, load_registry\n"
     "def evaluate_with_eval(self, metrics):\n"
     "    return bool(eval(compile(self._tree, '<expr>', 'eval'), {'__builtins__': {}}, dict(metrics)))\n"
     "TargetExpression.evaluate = evaluate_with_eval\n"
     "load_registry(Path(sys.argv[1])).evaluate_run('M2-sim-insertion-loss', {'insertion_loss_db': -0.5})",
     "compile() from __main__"),
])
def test_harness_detects_a_violation(tmp_path: Path, body: str, violation: str) -> None:
    """Negative control: an mlflow/sqlalchemy import or an eval/exec/compile call, even swallowed, fails."""
    code, report = run_harness(tmp_path, body)
    assert violation in report["violations"], report
    assert code == 1
