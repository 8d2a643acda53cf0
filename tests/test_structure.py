"""The package's shape: no import cycles (lazy imports inside functions included), and no run mode importing
another. Read from the source with `ast`, so a cycle that lazy imports hide at run time is still found."""
import ast
import os
from typing import Dict, List, Optional, Set

import effdet

PACKAGE_DIR = os.path.dirname(os.path.abspath(effdet.__file__))
ROOT = os.path.dirname(PACKAGE_DIR)
MODES = "effdet.modes"
# a mode may import the registry its modes register in; the package __init__ imports every mode to register it
MODE_IMPORTS_ALLOWED = {f"{MODES}.registry"}
# imports between packages that go against their order; none (the moving average that eval, infer and export
# restore lives in effdet/model/, beside the network)
PACKAGE_IMPORTS_ALLOWED = set()
ARTIFACTS = "effdet.artifacts"


def module_files(package_dir: str = PACKAGE_DIR) -> Dict[str, str]:
    """Dotted name → path of every module of the package (a package is its __init__.py)."""
    found = {}
    for directory, _, files in os.walk(package_dir):
        for file in files:
            if not file.endswith(".py"):
                continue
            parts = os.path.relpath(os.path.join(directory, file), os.path.dirname(package_dir))[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = os.path.join(directory, file)
    return found


def imported_modules(name: str, path: str, modules: Set[str]) -> Set[str]:
    """The package's modules that `name` imports anywhere in its file (module level, functions, branches):
    `from effdet.x import y` is effdet.x.y when that is a module, otherwise effdet.x (its __init__)."""
    with open(path) as handle:
        tree = ast.parse(handle.read(), path)
    is_package = path.endswith("__init__.py")
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(name, is_package, node.module, node.level)
            for alias in node.names:
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {target for target in targets if target in modules and target != name}


def _absolute(name: str, is_package: bool, module: Optional[str], level: int) -> str:
    if not level:
        return module or ""
    package = name.split(".") if is_package else name.split(".")[:-1]
    base = package[: len(package) - level + 1]
    return ".".join(base + ([module] if module else []))


def import_graph(package_dir: str = PACKAGE_DIR) -> Dict[str, Set[str]]:
    files = module_files(package_dir)
    return {name: imported_modules(name, path, set(files)) for name, path in files.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import cycle as [a, b, ..., a], or None."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: finished
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def package_graph(graph: Dict[str, Set[str]]) -> Dict[str, Set[str]]:
    """effdet's subpackages and top-level modules (effdet.hardware, effdet.sweep, ...) and the others each
    imports, from its modules' imports."""
    def top(name: str) -> str:
        return ".".join(name.split(".")[:2])

    packages: Dict[str, Set[str]] = {}
    for name, targets in graph.items():
        packages.setdefault(top(name), set()).update(
            top(target) for target in targets
            if top(target) != top(name) and (name, target) not in PACKAGE_IMPORTS_ALLOWED)
    return packages


def mode_imports(graph: Dict[str, Set[str]]) -> List[str]:
    """`a → b` for every mode module a that imports another mode module b."""
    found = []
    for name, targets in sorted(graph.items()):
        if not name.startswith(MODES + ".") or name in MODE_IMPORTS_ALLOWED:
            continue
        found += [f"{name} → {target}" for target in sorted(targets)
                  if (target == MODES or target.startswith(MODES + ".")) and target not in MODE_IMPORTS_ALLOWED]
    return found


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_the_packages_import_each_other_in_one_direction():
    """Stronger than no module cycle: hardware never reaches into train (the worker group is in hardware), model
    never into eval, and so on."""
    cycle = find_cycle(package_graph(import_graph()))
    assert cycle is None, "packages import each other: " + " → ".join(cycle)


def test_no_mode_imports_another_mode():
    found = mode_imports(import_graph())
    assert not found, "a mode imports another (move what they share out of effdet/modes/): " + "; ".join(found)


def artifact_names(package_dir: str) -> Dict[str, str]:
    """The names effdet/artifacts.py defines (its upper-case string constants) → the constant's name."""
    with open(os.path.join(package_dir, "artifacts.py")) as handle:
        tree = ast.parse(handle.read())
    return {node.value.value: node.targets[0].id for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id.isupper() and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)}


def artifact_literals(package_dir: str = PACKAGE_DIR) -> List[str]:
    """`module:line "name" (effdet.artifacts.CONSTANT)` for every string literal outside effdet.artifacts that
    spells one of its names: anywhere when it is a file name (it has a dot), as an argument of os.path.join
    when it is a bare word ("checkpoints" is also an ordinary dict key)."""
    names = artifact_names(package_dir)
    found = []
    for module, path in sorted(module_files(package_dir).items()):
        if module == ARTIFACTS:
            continue
        with open(path) as handle:
            tree = ast.parse(handle.read(), path)
        joined = {id(arg) for node in ast.walk(tree) if isinstance(node, ast.Call)
                  and ast.unparse(node.func) == "os.path.join" for arg in node.args}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names \
                    and ("." in node.value or id(node) in joined):
                found.append(f"{module}:{node.lineno} \"{node.value}\" ({ARTIFACTS}.{names[node.value]})")
    return found


def test_run_dir_file_names_are_spelled_only_in_effdet_artifacts():
    found = artifact_literals()
    assert not found, "use the name from effdet/artifacts.py: " + "; ".join(found)


def write_package(root, files: Dict[str, str]) -> str:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(root / "effdet")


def test_a_cycle_through_a_lazy_import_or_a_package_init_is_found(tmp_path):
    package = write_package(tmp_path, {
        "effdet/__init__.py": "",
        "effdet/hardware/__init__.py": "from effdet.hardware import cpu\n",
        "effdet/hardware/registry.py": "HARDWARE = {}\n",
        "effdet/hardware/cpu.py": "def setup():\n    from effdet.hardware import registry, HARDWARE\n",
        "effdet/train/__init__.py": "",
        "effdet/train/loop.py": "from .. import hardware\n",
    })
    graph = import_graph(package)
    assert graph["effdet.hardware.cpu"] == {"effdet.hardware.registry", "effdet.hardware"}
    assert graph["effdet.train.loop"] == {"effdet.hardware"}  # relative imports resolve too
    assert find_cycle(graph) == ["effdet.hardware", "effdet.hardware.cpu", "effdet.hardware"]
    (tmp_path / "effdet/hardware/cpu.py").write_text("from effdet.hardware.registry import HARDWARE\n")
    assert find_cycle(import_graph(package)) is None


def test_a_mode_importing_another_mode_is_found(tmp_path):
    package = write_package(tmp_path, {
        "effdet/__init__.py": "",
        "effdet/modes/__init__.py": "from effdet.modes import evaluation, infer, registry\n",
        "effdet/modes/registry.py": "",
        "effdet/modes/evaluation.py": "from effdet.modes.registry import MODES\n",
        "effdet/modes/infer.py": "def infer():\n    from effdet.modes.evaluation import checkpoint_of\n",
    })
    assert mode_imports(import_graph(package)) == ["effdet.modes.infer → effdet.modes.evaluation"]
    (tmp_path / "effdet/modes/infer.py").write_text("from effdet.modes import MODES\n")
    assert mode_imports(import_graph(package)) == ["effdet.modes.infer → effdet.modes"]


def test_a_package_cycle_without_a_module_cycle_is_found(tmp_path):
    """Two modules of two packages that import each other's other modules: no module cycle, a package cycle."""
    package = write_package(tmp_path, {
        "effdet/__init__.py": "",
        "effdet/hardware/__init__.py": "",
        "effdet/hardware/ranks.py": "",
        "effdet/hardware/gaudi.py": "def setup():\n    from effdet.train.distributed import init_workers\n",
        "effdet/train/__init__.py": "",
        "effdet/train/distributed.py": "from effdet.hardware.ranks import launched_as_worker\n",
    })
    graph = import_graph(package)
    assert find_cycle(graph) is None
    assert find_cycle(package_graph(graph)) == ["effdet.hardware", "effdet.train", "effdet.hardware"]


def test_a_run_dir_file_name_spelled_outside_effdet_artifacts_is_found(tmp_path):
    package = write_package(tmp_path, {
        "effdet/__init__.py": "",
        "effdet/artifacts.py": 'CHECKPOINTS = "checkpoints"\nTRAIN_SUMMARY = "train_summary.json"\n',
        "effdet/sweep.py": 'SUMMARY = "train_summary.json"\n',
        "effdet/modes/__init__.py": "",
        "effdet/modes/train.py": 'import os\nRESULT = {"checkpoints": []}\nPATH = os.path.join("run", "checkpoints")\n',
    })
    assert artifact_literals(package) == ['effdet.modes.train:3 "checkpoints" (effdet.artifacts.CHECKPOINTS)',
                                          'effdet.sweep:1 "train_summary.json" (effdet.artifacts.TRAIN_SUMMARY)']
