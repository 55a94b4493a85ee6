"""The architecture as tests: the import-linter contracts of pyproject.toml (layers and forbidden imports),
no import cycle between packages or modules, functions of at most 80 lines, modules of at most 600, no
module-level mutable state in the workers, one definition of the sampling parameters, and a tree that
works in any clone (no symlinks, no sys.path edits)."""

from __future__ import annotations

import ast
import itertools
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PACKAGES = PYPROJECT["tool"]["importlinter"]["root_packages"]
# A module holds one idea, in sections where it is long (a training run's loop, its state and its report
# read best together); functions stay short.
MAX_LINES = 600
MAX_FUNCTION_LINES = 80


def test_import_contracts_are_kept(monkeypatch, capsys):
    from importlinter.cli import lint_imports

    monkeypatch.chdir(ROOT)
    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 broken" in out


def test_no_import_cycle_between_packages():
    import grimp

    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    cycles = [(a, b) for a, b in itertools.combinations(PACKAGES, 2)
              if graph.chain_exists(importer=a, imported=b, as_packages=True)
              and graph.chain_exists(importer=b, imported=a, as_packages=True)]
    assert not cycles, f"packages that import each other: {cycles}"


def test_every_package_is_analysed():
    """A new top-level package must join the contracts (and setuptools' list)."""
    include = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert include == set(PACKAGES)


def _modules() -> list[Path]:
    skip = {"tests", "bench", ".venv", "wheels", "build"}
    return sorted(p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts[:1])
                  and ".egg-info" not in str(p))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_exceeds_the_line_limit(path):
    name = str(path.relative_to(ROOT))
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{name} has {n} lines (at most {MAX_LINES}): split it by responsibility"


def test_no_import_cycle_between_modules():
    import grimp

    graph = grimp.build_graph(*PACKAGES, cache_dir=None, exclude_type_checking_imports=True)
    cycles = [(a, b) for a in sorted(graph.modules) for b in graph.find_modules_directly_imported_by(a)
              if a < b and graph.direct_import_exists(importer=b, imported=a)]
    assert not cycles, f"modules that import each other: {cycles}"


def _code_files() -> list[Path]:
    skip = {".venv", "wheels", "build", "tests"}
    return sorted(p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts[:1])
                  and ".egg-info" not in str(p) and "migrations" not in p.parts)


def test_no_function_exceeds_80_lines():
    long = []
    for path in _code_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 80 lines: " + "; ".join(long)


MUTABLE_CALLS = {"dict", "list", "set", "defaultdict", "OrderedDict", "deque", "Lock", "RLock", "Condition",
                 "Event", "Semaphore", "BoundedSemaphore", "Queue", "SimpleQueue", "local"}


def _module_state(tree: ast.Module) -> list[str]:
    """Module-level names bound to mutable containers or locks, and every `global` statement."""
    found = [f"global {', '.join(node.names)} (line {node.lineno})" for node in ast.walk(tree)
             if isinstance(node, ast.Global)]
    for node in tree.body:
        if not isinstance(node, ast.Assign | ast.AnnAssign) or node.value is None:
            continue
        value = node.value
        called = value.func.attr if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) else \
            value.func.id if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) else None
        names = [ast.unparse(t) for t in (node.targets if isinstance(node, ast.Assign) else [node.target])]
        display = isinstance(value, ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp | ast.SetComp)
        # an UPPER_CASE display is configuration, read and never changed (Celery's routes, retry options)
        state = [n for n in names if not (display and n.isupper())]
        if (display or called in MUTABLE_CALLS) and state:
            found += [f"{n} (line {node.lineno})" for n in state]
    return found


def test_the_workers_keep_no_module_level_mutable_state():
    """A worker process's state lives in objects it owns (the generate task's Runtime), not in modules."""
    found = {str(p.relative_to(ROOT)): state for p in sorted((ROOT / "worker").rglob("*.py"))
             if (state := _module_state(ast.parse(p.read_text(encoding="utf-8"))))}
    assert not found, f"module-level mutable state in worker/: {found}"


def test_the_singleton_check_sees_what_it_forbids():
    tree = ast.parse("import threading\n_lock = threading.Lock()\n_jobs: dict = {}\nX = (1, 2)\nY = {}\n"
                     "def f():\n    global _jobs\n")
    assert _module_state(tree) == ["global _jobs (line 7)", "_lock (line 2)", "_jobs (line 3)"]


def test_one_definition_of_the_sampling_parameters():
    defined = [f"{p.relative_to(ROOT)}" for p in _code_files() + sorted((ROOT / "tests").rglob("*.py"))
               for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
               if isinstance(node, ast.ClassDef) and node.name == "SamplingParams"]
    assert defined == ["core/contracts.py"], defined


def test_no_symlinks_in_git():
    staged = subprocess.run(["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    links = [line.split("\t", 1)[1] for line in staged.splitlines() if line.startswith("120000")]
    assert not links, f"symlinks break in other clones: {links}"


def test_no_sys_path_edits_in_tests_or_bench():
    edits = [f"{p.relative_to(ROOT)}" for folder in ("tests", "bench") for p in sorted((ROOT / folder).rglob("*.py"))
             if "sys.path." in p.read_text(encoding="utf-8") and p.name != "test_layers.py"]
    assert not edits, f"import by module instead: {edits}"
