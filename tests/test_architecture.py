"""The layout is the architecture: imports flow one way, applications stand side by side, the
wheel holds every package, and the language layer needs no torch.

    language (acdc_recipe.language, errors, files, console) <- compiler <- engine (runtime)
        <- shared (formats, models) <- applications (trainer, exporter, report, integrations,
        convert; none imports another) <- facade (acdc_recipe/__init__) <- cli

A module imports only from its own layer or those to its left, an application only from
itself and the layers below the applications, and no module imports the facade. Imports inside
functions are allowed only where a module must stay importable without torch (the facade and
the CLI verbs) or for an optional dependency, and they obey the same direction.
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
LAYERS = ("language", "compiler", "engine", "shared", "application", "facade", "cli")
PREFIXES = {  # the first matching prefix decides a module's layer
    "acdc_recipe.compiler": "compiler",
    "acdc_recipe.runtime": "engine",
    "acdc_recipe.formats": "shared",
    "acdc_recipe.models": "shared",
    "acdc_recipe.trainer": "application",
    "acdc_recipe.exporter": "application",
    "acdc_recipe.report": "application",
    "acdc_recipe.integrations": "application",
    "acdc_recipe.convert": "application",
    "acdc_recipe.cli": "cli",
}


@functools.cache
def modules() -> dict[str, Path]:
    """Every module of the installed package by its dotted name."""
    found = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def layer(module: str) -> str:
    if module == "acdc_recipe":
        return "facade"
    for prefix, name in PREFIXES.items():
        if module == prefix or module.startswith(prefix + "."):
            return name
    return "language"


def application(module: str) -> str | None:
    """The application a module belongs to (`acdc_recipe.trainer`, ...), else None."""
    if layer(module) != "application":
        return None
    return ".".join(module.split(".")[:2])


@functools.cache
def _parsed(source: str) -> ast.Module:
    return ast.parse(source)


def project_imports(source: str, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported acdc_recipe module, line, inside a function) for every import in `source`;
    `from acdc_recipe import X` names the module `acdc_recipe.X` when there is one, else the
    facade."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:
                    submodule = f"{child.module}.{alias.name}"
                    named = submodule if submodule in known else child.module
                    found.append((named, child.lineno, in_function))
            visit(child, nested)

    visit(_parsed(source), False)
    return [(name, line, inner) for name, line, inner in found if name.startswith("acdc_recipe")]


def violations(sources: dict[str, str], known: set[str]) -> list[str]:
    """Every import in `sources` (module name -> its code) that breaks the rule above."""
    wrong = []
    for module, source in sources.items():
        for imported, line, _ in project_imports(source, known):
            if imported == "acdc_recipe" and module != "acdc_recipe":
                wrong.append(f"{module}:{line} imports the facade (acdc_recipe/__init__)")
            elif LAYERS.index(layer(imported)) > LAYERS.index(layer(module)):
                wrong.append(
                    f"{module}:{line} ({layer(module)}) imports {imported} ({layer(imported)})"
                )
            elif application(module) and application(imported) not in (None, application(module)):
                wrong.append(
                    f"{module}:{line}: application {application(module)} imports "
                    f"{imported} of application {application(imported)}"
                )
    return wrong


@functools.cache
def package_sources() -> dict[str, str]:
    return {module: path.read_text(encoding="utf-8") for module, path in modules().items()}


def test_every_import_points_left_and_no_application_imports_another():
    assert violations(package_sources(), set(modules())) == []


@pytest.mark.parametrize(
    ("module", "code", "broken"),
    [
        ("acdc_recipe.exporter.sideways", "from acdc_recipe.trainer.loop import train", "trainer"),
        ("acdc_recipe.report.sideways", "import acdc_recipe.convert.sparseml", "convert"),
        ("acdc_recipe.runtime.upwards", "from acdc_recipe.formats import checkpoint", "shared"),
        ("acdc_recipe.models.upwards", "from acdc_recipe.trainer import data", "application"),
        ("acdc_recipe.trainer.facade", "from acdc_recipe import compile", "facade"),
    ],
)
def test_the_rule_catches_sideways_upward_and_facade_imports(module, code, broken):
    sources = {**package_sources(), module: code}
    found = violations(sources, set(modules()) | {module})
    assert len(found) == 1 and found[0].startswith(module) and broken in found[0]


def test_project_imports_inside_functions_are_only_for_a_torch_free_import():
    lazy = [
        f"{module}:{line} imports {imported}"
        for module, source in package_sources().items()
        for imported, line, inner in project_imports(source, set(modules()))
        if inner and layer(module) not in ("facade", "cli")
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


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))\n"
    result = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    return {name for name in result.stdout.split() if name.startswith("acdc_recipe")}


@pytest.mark.slow
def test_the_engine_loads_no_application_and_the_facade_loads_nothing_heavy():
    engine = _loaded_after("import acdc_recipe.runtime")
    assert {m for m in engine if layer(m) in ("shared", "application", "cli")} == set()
    facade = _loaded_after("import acdc_recipe")
    assert facade <= {"acdc_recipe"}, sorted(facade)


def test_the_language_layer_and_the_cli_parser_import_without_torch():
    code = (
        "import sys, acdc_recipe, acdc_recipe.language.loading, acdc_recipe.cli.main as m\n"
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


@pytest.mark.slow
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
    templates = ROOT / "acdc_recipe" / "report" / "templates"
    expected |= {f"acdc_recipe/report/templates/{p.name}" for p in templates.iterdir()}
    assert expected - names == set()
    assert not [n for n in names if n.split("/")[0] in ("compiler", "runtime", "tests")]


def test_pyproject_lists_every_package():
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    packages = {m for m, p in modules().items() if p.name == "__init__.py"}
    assert listed == packages
