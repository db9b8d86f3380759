"""The layout is the architecture: imports flow one way, the wheel holds every package, and the
language layer needs no torch.

    language (acdc_recipe.*) <- compiler <- engine (runtime) <- application (runtime.train,
        integrations) <- public API (acdc_recipe/__init__) <- CLI (acdc_recipe.cli)

A module imports only from its own layer or those to its left. Imports inside functions are
allowed only where a module must stay importable without torch (the public API and the CLI
verbs) or for an optional dependency, and they obey the same direction.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {
    "acdc_recipe": ROOT / "acdc_recipe",
    "acdc_recipe.compiler": ROOT / "compiler",
    "acdc_recipe.runtime": ROOT / "runtime",
    "acdc_recipe.recipes": ROOT / "recipes",
}
LAYERS = ("language", "compiler", "engine", "application", "api", "cli")


@functools.cache
def modules() -> dict[str, Path]:
    """Every module of the installed package by its dotted name."""
    found = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            if package == "acdc_recipe" and path.relative_to(folder).parts[0] in (
                "compiler",
                "runtime",
            ):
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def layer(module: str) -> str:
    if module == "acdc_recipe":
        return "api"
    if module.startswith("acdc_recipe.cli"):
        return "cli"
    if module.startswith(
        ("acdc_recipe.runtime.train", "acdc_recipe.runtime.export", "acdc_recipe.integrations")
    ):
        return "application"
    if module.startswith("acdc_recipe.runtime"):
        return "engine"
    if module.startswith("acdc_recipe.compiler"):
        return "compiler"
    return "language"


def project_imports(path: Path, module: str) -> list[tuple[str, int, bool]]:
    """(imported acdc_recipe module, line, inside a function) for every import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    known = modules()
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:  # `from acdc_recipe import files` names a module
                    submodule = f"{child.module}.{alias.name}"
                    named = submodule if submodule in known else child.module
                    found.append((named, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return [(name, line, inner) for name, line, inner in found if name.startswith("acdc_recipe")]


def test_every_import_points_left():
    wrong = []
    for module, path in modules().items():
        for imported, line, _ in project_imports(path, module):
            if LAYERS.index(layer(imported)) > LAYERS.index(layer(module)):
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({layer(module)}) imports "
                             f"{imported} ({layer(imported)})")  # fmt: skip
    assert wrong == []


def test_project_imports_inside_functions_are_only_for_a_torch_free_import():
    lazy = [
        f"{path.relative_to(ROOT)}:{line} imports {imported}"
        for module, path in modules().items()
        for imported, line, inner in project_imports(path, module)
        if inner and layer(module) not in ("api", "cli")
    ]
    assert lazy == []


def test_no_import_hides_behind_type_checking():
    hidden = [
        str(path.relative_to(ROOT))
        for path in modules().values()
        if "if TYPE_CHECKING:" in path.read_text(encoding="utf-8")
        and path != PACKAGE_DIRS["acdc_recipe"] / "__init__.py"
    ]
    assert hidden == []


def test_the_language_layer_and_the_cli_parser_import_without_torch():
    code = (
        "import sys, acdc_recipe, acdc_recipe.loading, acdc_recipe.cli.main as m\n"
        "m.build_parser()\n"
        "assert 'torch' not in sys.modules, sorted(k for k in sys.modules if 'torch' in k)[:5]\n"
        "r = acdc_recipe.load_recipe('quickstart')\n"
        "acdc_recipe.lower(r.schedule)\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(ROOT)]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    (found,) = out.glob("acdc_recipe-*.whl")
    return found


def test_the_wheel_holds_every_package_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"{m.replace('.', '/')}/__init__.py"
        for m, p in modules().items()
        if p.name == "__init__.py"
    }
    expected |= {
        f"{m.replace('.', '/')}.py" for m, p in modules().items() if p.name != "__init__.py"
    }
    expected |= {f"acdc_recipe/recipes/{p.name}" for p in (ROOT / "recipes").glob("*.yaml")}
    expected |= {
        f"acdc_recipe/runtime/train/templates/{p.name}"
        for p in (ROOT / "runtime" / "train" / "templates").iterdir()
    }
    assert expected - names == set()
    assert not [n for n in names if n.split("/")[0] in ("compiler", "runtime", "tests")]


def test_pyproject_lists_every_package():
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    packages = {m for m, p in modules().items() if p.name == "__init__.py"}
    assert listed == packages
