"""The package's shape: folders are layers, imports go down, and nothing imports in a circle.

Every import counts, also the ones inside functions (a lazy import is still a dependency);
only ``if TYPE_CHECKING:`` imports, which never run, are left out. Optional extras are
imported inside the functions that use them, never when a module loads.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "torchhouse"

# bottom to top: a module may import its own layer and the layers below
LAYERS = [
    ["errors", "version"],
    ["progress", "models", "datasets", "finetune"],
    ["data"],
    ["metrics"],
    ["summary", "files"],
    ["runs"],
    ["parallel"],
    ["callbacks"],
    ["train"],
    ["frontends", "config"],
    ["app"],
    ["__init__", "__main__"],
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}
OPTIONAL = {
    "matplotlib", "optuna", "tensorboard", "streamlit", "pandas", "mlflow", "wandb", "lightning",
    "transformers", "datasets", "gradio", "fastapi", "uvicorn", "sklearn", "torchmetrics", "PIL",
    "IPython", "onnx", "onnxscript", "psycopg", "tokenizers", "httpx",
}  # fmt: skip
PAGE_SCRIPTS = {"torchhouse.app.streamlit_app", "torchhouse.app.gradio_app"}  # run by their servers


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 2 else parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def resolve(target: str) -> str:
    """``torchhouse.data`` + ``rng`` -> the module that really is imported."""
    path = PACKAGE.parent.joinpath(*target.split("."))
    return target if path.is_dir() or path.with_suffix(".py").is_file() else target.rpartition(".")[0]


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import that runs."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, top):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return  # typing only: never runs
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno, top) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("torchhouse"):
                found.extend((resolve(f"{node.module}.{a.name}"), node.lineno, top) for a in node.names)
            else:
                found.append((node.module, node.lineno, top))
        inner = top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    for node in tree.body:
        visit(node, True)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_belongs_to_a_layer_and_few_stay_at_the_top():
    units = {unit_of(m) for m in MODULES}
    assert units <= set(LAYER), f"modules outside the layers: {units - set(LAYER)}"
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) < 12, top


def test_imports_only_go_down_the_layers_also_inside_functions():
    wrong = []
    for module, path in MODULES.items():
        for target, line, _ in imports(path):
            if target.startswith("torchhouse") and LAYER[unit_of(target)] > LAYER[unit_of(module)]:
                wrong.append(f"{module}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_circles_at_runtime():
    graph = {
        module: {t for t, _, _ in imports(path) if t.startswith("torchhouse") and t != module}
        for module, path in MODULES.items()
    }
    state: dict[str, int] = {}
    cycles = []

    def walk(node, stack):
        state[node] = 1  # on the current path
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                walk(nxt, [*stack, nxt])
        state[node] = 2  # done

    for module in graph:
        if module not in state:
            walk(module, [module])
    assert not cycles, "\n".join(cycles[:10])


def test_a_module_inside_a_package_imports_its_siblings_not_the_package():
    """``from torchhouse.data import x`` inside data/ would import data/__init__, which imports it."""
    wrong = []
    for module, path in MODULES.items():
        package = ".".join(module.split(".")[:2])
        if module == package or path.name == "__init__.py":
            continue
        for target, line, _ in imports(path):
            if target == package:
                wrong.append(f"{module}:{line} imports its own package {package}")
    assert not wrong, "\n".join(wrong)


def test_optional_extras_are_imported_only_by_the_functions_that_use_them():
    wrong = []
    for module, path in MODULES.items():
        if module in PAGE_SCRIPTS:
            continue
        for target, line, top in imports(path):
            if top and target.split(".")[0] in OPTIONAL:
                wrong.append(f"{module}:{line} imports {target} when it loads")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("unit", ["callbacks.base"])
def test_the_callback_base_imports_nothing_of_the_package(unit):
    path = PACKAGE / (unit.replace(".", "/") + ".py")
    assert not [t for t, _, _ in imports(path) if t.startswith("torchhouse")]
