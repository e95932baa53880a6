"""The dependency rule, checked by subpackage rather than written in docstrings.

- The package is its stages: ``core``, ``train``, ``convert``, ``serving``, ``client``, ``play`` (and the
  generated ``kserve`` stubs); above them only the command entries (``console``, ``serve``, ``plots``).
- Imports only run downward: entries -> stages -> ``core`` -> ``kserve``. ``core``, ``serving`` and
  ``play`` never import ``train`` or ``convert``; ``convert`` may import ``train`` (it loads the
  agent). The one exception: the play side's local Chainer policy imports ``train.agent`` inside
  the function that builds it.
- The model's I/O contract (``core.contract``), the game id (``core.game_id``) and the keys (``core.keys``,
  shared by serve and player) need the standard library only.
- Serving and the inference client need neither Chainer, cv2, gymnasium nor the ALE: they import
  with those blocked, in a fresh interpreter (as in a client-only or server-only install).
- The package has no import cycle, and the Triton twin imports nothing of the package.

The static checks read every module's ``import`` statements with :mod:`ast`, so they see
imports that a test run never reaches.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ROOT, run_python_stdlib_only, run_python_without

PACKAGE = "atari_trtis_demo"
PACKAGE_DIR = ROOT / PACKAGE

# The command entries above every stage: the console-script dispatcher and the two ``python -m``
# spellings kept from before the subpackages (and the package's own __init__, "").
ENTRY_POINTS = {"", "console", "serve", "plots"}
# What each stage may import besides itself: the layer order, written once. ``kserve`` holds the
# generated protocol stubs, below ``core`` because ``core.model_repository`` reads configs with them.
MAY_IMPORT = {
    "kserve": set(),
    "core": {"kserve"},
    "train": {"core"},
    "convert": {"core", "kserve", "train"},
    "serving": {"core", "kserve"},
    "client": {"core", "kserve"},
    "play": {"core", "kserve", "client"},
}
# The one import against the layers, and only inside a function: the standalone player
# (``--modelpath``) runs the Chainer agent itself, and importing it lazily keeps Chainer out of
# the remote player's imports.
LAZY_EXCEPTIONS = {("play.policies", "train.agent")}
# Modules that pull in cv2 and gymnasium (the env wrappers), and those that must not reach them.
GYM_SIDE = {"core.envs", "core.atari_wrappers"}
WITHOUT_GYM_OUTSIDE_SERVING = {
    "core.contract", "core.errors", "core.atomic", "core.game_id", "core.cli_args", "core.model_repository",
    "core.model_config", "core.typed_flags", "core.keys",
    "client.inference_client", "client.server_list", "client.server_watch", "play.play_config",
}  # fmt: skip
# Blocked when serving and the client are imported: the training stack and the games.
NOT_FOR_SERVING = ("chainer", "chainerrl", "onnx_chainer", "gym", "cv2", "gymnasium", "ale_py", "pygame")
# The twin runs inside Triton's stub process, where this package is not importable.
TWIN = "serving.triton_twin_model"
TWIN_IMPORTS = {"numpy", "onnxruntime", "triton_python_backend_utils"}


def stage_of(module: str) -> str | None:
    """The stage a module belongs to (its first name), None for the entries above the stages."""
    return None if module in ENTRY_POINTS else module.split(".")[0]


def serving_modules() -> list[str]:
    """Every module of the serving stage that Python can import here (the twin needs Triton's utils)."""
    names = [".".join(p.relative_to(PACKAGE_DIR).with_suffix("").parts) for p in (PACKAGE_DIR / "serving").glob("*.py")]
    return sorted(n for n in names if n != TWIN and not n.endswith("__init__"))


@dataclass(frozen=True)
class Import:
    importer: str  # the importing module, relative to the package ("kserve.kserve_v2_pb2")
    target: str  # the imported module: relative for the package's own, else the full dotted name
    line: int
    lazy: bool  # inside a function: runs only when that function is called

    def __str__(self) -> str:
        where = "inside a function" if self.lazy else "at module level"
        return f"{PACKAGE}/{self.importer.replace('.', '/')}.py:{self.line} imports {self.target} {where}"


def package_modules() -> dict[str, Path]:
    """Every module of the package by its name relative to the package ('' for the package itself)."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The imports in ``path``'s source; ``from atari_trtis_demo import atomic`` counts as importing ``atomic``."""
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def own(dotted: str) -> str | None:
        if dotted == PACKAGE:
            return ""
        return dotted.removeprefix(PACKAGE + ".") if dotted.startswith(PACKAGE + ".") else None

    def add(dotted: str, line: int, lazy: bool) -> None:
        relative = own(dotted)
        target = dotted if relative is None else relative
        if relative is not None and relative not in modules:
            return  # a name from a module, not a module: the module itself was added already
        found.append(Import(name, target, line, lazy))

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, child.lineno, inner)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: resolve against this module's package
                    anchor = [PACKAGE, *name.split(".")] if name else [PACKAGE]
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                add(base, child.lineno, inner)
                for alias in child.names:  # ``from pkg import module``
                    if own(f"{base}.{alias.name}") in modules:
                        add(f"{base}.{alias.name}", child.lineno, inner)
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, list[Import]]:
    modules = package_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def own_imports(graph: dict[str, list[Import]], name: str, lazy: bool = True) -> list[Import]:
    return [i for i in graph[name] if i.target in graph and (lazy or not i.lazy)]


def test_the_parser_sees_the_imports_it_must_judge(graph: dict[str, list[Import]]) -> None:
    """Guards the checks below: a parser that saw nothing would let every rule pass."""
    assert {"core.contract", "serving.serve", "play.policies", "train.agent", "kserve.kserve_v2_pb2"} <= set(graph)
    assert any(i.target == "core.contract" and not i.lazy for i in graph["client.answers"])
    assert any(i.target == "core.atomic" for i in graph["core.model_repository"]), "from package import module"
    assert any(i.target == "convert.onnx_export" and i.lazy for i in graph["convert.convert_cli"]), "lazy imports"
    assert any(i.target == "chainer" and not i.lazy for i in graph["train.agent"])
    assert any(i.target == "train.agent" and i.lazy for i in graph["play.policies"]), "the lazy exception is seen"


def test_every_module_sits_in_a_stage(graph: dict[str, list[Import]]) -> None:
    """The tree shows the stages: no module lies loose beside them but the command entries."""
    loose = [name for name in graph if stage_of(name) is not None and stage_of(name) not in MAY_IMPORT]
    assert not loose, f"modules outside the stages {sorted(MAY_IMPORT)}: {sorted(loose)}"
    assert {stage_of(name) for name in graph} - {None} == set(MAY_IMPORT), "a stage with no module"


def test_imports_only_run_downward(graph: dict[str, list[Import]]) -> None:
    """core, serving and play never import train or convert; nothing imports an entry; inside functions too."""
    wrong = []
    for name in sorted(graph):
        stage = stage_of(name)
        for imp in own_imports(graph, name):
            target_stage = stage_of(imp.target)
            if stage is None:  # an entry: may import any stage
                ok = True
            elif target_stage is None:
                ok = False  # an entry is imported by no stage (it is where a command starts)
            else:
                ok = target_stage == stage or target_stage in MAY_IMPORT[stage]
                ok = ok or (imp.lazy and (name, imp.target) in LAZY_EXCEPTIONS)
            if not ok:
                wrong.append(str(imp))
    assert not wrong, "imports against the dependency rule:\n" + "\n".join(wrong)


def test_contract_game_id_and_keys_need_only_the_standard_library() -> None:
    result = run_python_stdlib_only(
        "import importlib.util\n"
        "assert importlib.util.find_spec('numpy') is None, 'third-party packages must be unreachable here'\n"
        "from atari_trtis_demo.core import contract, game_id, keys\n"
        "assert game_id.ENV_ID_KEY == contract.ENV_ID_KEY\n"
        "print(contract.FRAME_STACK_SHAPE, game_id.resolve_env_id(None, None, 'nowhere'), keys.check_key('K', 'k'))\n"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "(4, 84, 84) BreakoutNoFrameskip-v4 k"


def defined_names(path: Path) -> set[str]:
    """What a module defines at its top level: functions, classes, assigned names (its imports are not its own)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(n.id for target in node.targets for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_every_name_is_imported_from_the_module_that_defines_it() -> None:
    """One import path per name: no module hands on what it imported, and nothing imports through one that
    does (the package, the tests, the benchmarks and the scripts). A submodule counts as defined by its package."""
    wrong = []
    for path in sorted(p for d in (PACKAGE, "tests", "bench", "scripts") for p in (ROOT / d).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level or not (node.module or "").startswith(PACKAGE):
                continue
            target = ROOT / (node.module.replace(".", "/") + ".py")
            package = ROOT / node.module.replace(".", "/")
            for alias in node.names:
                if (package / f"{alias.name}.py").exists() or (package / alias.name).is_dir():
                    continue
                if not target.exists() or alias.name not in defined_names(target):
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {alias.name} from {node.module}")
    assert not wrong, "names imported from a module that does not define them:\n" + "\n".join(wrong)


def test_the_key_names_and_check_live_in_core_keys_alone() -> None:
    """One key validator and one set of names for serve, player and page (issue 25): nothing else spells them."""
    spelled = []
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        text = path.read_text()
        if path.name != "keys.py" and ('"ATARI_DEMO_KEY"' in text or '"atari-demo-key"' in text):
            spelled.append(str(path.relative_to(ROOT)))
    assert not spelled, spelled


def test_the_inference_client_imports_without_chainer_cv2_or_gymnasium() -> None:
    result = run_python_without(
        "import sys\n"
        "from atari_trtis_demo.client.inference_client import InferenceClient\n"
        "from atari_trtis_demo.core.game_id import remote_game\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('numpy', 'grpc')) != [])\n",
        modules=NOT_FOR_SERVING,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "True"


def test_serving_imports_without_chainer_cv2_or_gymnasium() -> None:
    """Every serving module, and serve's command line through its ``python -m`` entry parsing --help, with the
    training stack and the games blocked."""
    modules = ", ".join(f"atari_trtis_demo.{name}" for name in [*serving_modules(), "core.model_repository"])
    result = run_python_without(
        f"import {modules}\nfrom atari_trtis_demo.serve import main\nraise SystemExit(main(['--help']))\n",
        modules=NOT_FOR_SERVING,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--model-repository" in result.stdout


def test_serving_and_the_client_never_reach_cv2_or_gymnasium(graph: dict[str, list[Import]]) -> None:
    """Through any chain of module-level imports: the static twin of the runtime checks above."""
    wrong = []
    without_gym = {name for name in graph if stage_of(name) == "serving"} | WITHOUT_GYM_OUTSIDE_SERVING
    for start in sorted(without_gym):
        seen, todo, via = {start}, [start], {start: [start]}
        while todo:
            name = todo.pop()
            for imp in own_imports(graph, name, lazy=False):
                if imp.target not in seen:
                    seen.add(imp.target)
                    via[imp.target] = [*via[name], imp.target]
                    todo.append(imp.target)
        wrong += [" -> ".join(via[bad]) for bad in sorted(seen & GYM_SIDE)]
    assert not wrong, "modules that must not need cv2/gymnasium reach them:\n" + "\n".join(wrong)


def test_no_import_cycles(graph: dict[str, list[Import]]) -> None:
    """Counting imports inside functions too: imports only run downward, from the commands to the core."""
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def walk(name: str, path: list[str]) -> None:
        state[name] = "open"
        for imp in own_imports(graph, name):
            target = imp.target
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                walk(target, [*path, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_triton_twin_needs_nothing_of_this_package(graph: dict[str, list[Import]]) -> None:
    """It runs inside Triton's backend stub, where only numpy, onnxruntime and Triton's utils are at hand."""
    imported = {i.target.split(".")[0] for i in graph[TWIN]}
    assert imported, "the twin's imports were not found"
    assert imported - set(sys.stdlib_module_names) <= TWIN_IMPORTS, imported


def test_the_contract_imports_nothing_but_the_standard_library(graph: dict[str, list[Import]]) -> None:
    imported = {i.target.split(".")[0] for i in graph["core.contract"]}
    assert imported <= set(sys.stdlib_module_names), imported
