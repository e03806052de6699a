"""The package's structure: module-level imports form no cycle, and every `__all__` names what
its module defines."""

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "keras_stn"


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def module_level_imports(name, path):
    """The keras_stn modules `name` imports at import time (not inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:  # top-level statements only
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target in MODULES and target != name}
    return found


def test_module_level_imports_form_no_cycle():
    graph = {name: module_level_imports(name, path) for name, path in MODULES.items()}
    # A package's __init__ importing its own submodules is how packages work; a submodule
    # importing a sibling's package is resolved by Python at first use. What must not happen
    # is a module reaching itself again through other modules.
    state = {}

    def visit(name, trail):
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            cycle = trail[trail.index(name) :] + [name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        state[name] = "open"
        for target in sorted(graph[name]):
            if not (name.startswith(target + ".") or target.startswith(name + ".")):  # package <-> its own submodule
                visit(target, trail + [name])
        state[name] = "done"

    for name in graph:
        visit(name, [])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_all_names_what_the_module_defines(name):
    module = importlib.import_module(name)
    names = getattr(module, "__all__", [])
    assert all(hasattr(module, n) for n in names), [n for n in names if not hasattr(module, n)]
    assert len(set(names)) == len(names)
