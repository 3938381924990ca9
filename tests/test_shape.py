"""Functions short enough to read: at most 100 lines anywhere, 60 in the training core, and
`Model.fit` one screen (spec, data, strategy, loop). A function's length is its body without
its docstring; `Model.fit`'s is counted in lines of code (no blank or comment lines)."""

import ast
import inspect
import textwrap
from pathlib import Path

import torchhouse as th

PACKAGE = Path(th.__file__).resolve().parent
CORE = PACKAGE / "train"


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]  # the docstring
    if not body:
        return 0
    return body[-1].end_lineno - body[0].lineno + 1


def functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, node


def test_no_function_is_longer_than_a_hundred_lines_or_sixty_in_the_training_core():
    too_long = []
    for path, node in functions():
        limit = 60 if CORE in path.parents else 100
        if body_lines(node) > limit:
            too_long.append(
                f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {body_lines(node)} > {limit}"
            )
    assert not too_long, "\n".join(too_long)


def test_model_fit_reads_in_one_screen():
    source = textwrap.dedent(inspect.getsource(th.Model.fit))
    node = ast.parse(source).body[0]
    assert isinstance(node, ast.FunctionDef)
    first = node.body[1] if isinstance(node.body[0], ast.Expr) else node.body[0]
    lines = source.splitlines()[first.lineno - 1 : node.body[-1].end_lineno]
    code = [line for line in lines if line.strip() and not line.strip().startswith("#")]
    assert len(code) <= 40, f"Model.fit has {len(code)} lines of code"
