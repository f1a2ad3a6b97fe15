"""The layers of docs/architecture.md, checked against the imports of every module under reprotrain/.

The allowed arrows are parsed from the document's ```layers block, so the document and this test cannot drift:
an import between layers that the document does not allow, a layer the document does not name, an import cycle
between modules, or a torch import where the document forbids one fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT

DOC = PROJECT_ROOT / "docs" / "architecture.md"
PACKAGE = PROJECT_ROOT / "reprotrain"


def parse_layers(text: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """{layer: layers it may import}, {layer: third-party modules it must not import} from the ```layers block."""
    match = re.search(r"^```layers\n(.*?)^```", text, re.S | re.M)
    if match is None:
        raise AssertionError(f"{DOC}: no ```layers block")
    allowed: dict[str, set[str]] = {}
    forbidden: dict[str, set[str]] = {}
    for number, line in enumerate(match.group(1).splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if m := re.fullmatch(r"(\w+)\s*->\s*([\w,\s]*)", line):
            allowed[m.group(1)] = {name.strip() for name in m.group(2).split(",") if name.strip()}
        elif m := re.fullmatch(r"(\w+)\s*-x\s*([\w.,\s]+)", line):
            forbidden.setdefault(m.group(1), set()).update(n.strip() for n in m.group(2).split(",") if n.strip())
        else:
            raise AssertionError(f"{DOC}: line {number} of the layers block is neither `a -> b, c` nor `a -x m`: "
                                 f"{line}")
    return allowed, forbidden


def module_names(root: Path = PACKAGE) -> dict[str, Path]:
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imports_of(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """{module: {imported reprotrain module or third-party top-level name: line}}; function-level imports count."""
    def resolve(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            for target in targets:
                key = resolve(target) if target.split(".")[0] == "reprotrain" else target.split(".")[0]
                if key and key != module:
                    found.setdefault(key, node.lineno)
        graph[module] = found
    return graph


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "errors"  # the package root: __version__ only
    return "cli" if parts[1] == "__main__" else parts[1]


def violations(allowed: dict[str, set[str]], forbidden: dict[str, set[str]],
               graph: dict[str, dict[str, int]], modules: dict[str, Path], root: Path = PROJECT_ROOT) -> list[str]:
    problems = []
    for module in sorted(graph):
        layer = layer_of(module)
        where = modules[module].relative_to(root)
        if layer not in allowed:
            problems.append(f"{where}: layer {layer!r} has no line in the layers block of {DOC.name}")
            continue
        for target, line in sorted(graph[module].items()):
            if target.split(".")[0] == "reprotrain":
                other = layer_of(target)
                if other != layer and other not in allowed[layer]:
                    problems.append(f"{where}:{line}: {module} imports {target}: {layer} -> {other} is not an arrow "
                                    f"of {DOC.name}")
            elif target in forbidden.get(layer, ()):
                problems.append(f"{where}:{line}: {module} imports {target}, which {DOC.name} forbids in {layer}")
    return problems


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in graph:
                continue  # third party
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_cycles(allowed: dict[str, set[str]]) -> list[list[str]]:
    return cycles({layer: {t: 0 for t in targets} for layer, targets in allowed.items()})


def test_the_document_states_layers_without_a_cycle():
    allowed, forbidden = parse_layers(DOC.read_text(encoding="utf-8"))
    assert {"errors", "envlock", "fingerprint", "checkpoint", "integrations", "training", "cli"} <= set(allowed)
    assert layer_cycles(allowed) == []
    assert "torch" in forbidden["envlock"]
    for layer, targets in allowed.items():
        unknown = targets - set(allowed)
        assert not unknown, f"{layer} -> {unknown}: not a layer of the document"


def test_every_import_follows_an_arrow_of_the_document():
    allowed, forbidden = parse_layers(DOC.read_text(encoding="utf-8"))
    modules = module_names()
    assert violations(allowed, forbidden, imports_of(modules), modules) == []


def test_no_import_cycle_between_modules():
    """No cycle between modules, function-level imports included; the document cannot admit one."""
    assert cycles(imports_of(module_names())) == []


def test_a_planted_upward_import_fails(tmp_path):
    """The checks above are not vacuous: a copy of the package with one upward import and one cycle fails both."""
    import shutil

    copy = tmp_path / "reprotrain"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.json"))
    errors_py = copy / "errors.py"
    errors_py.write_text(errors_py.read_text() + "\n\ndef _late():\n    from reprotrain.checkpoint import store\n")
    envlock = copy / "envlock" / "verify.py"
    envlock.write_text(envlock.read_text() + "\n\ndef _gpu():\n    import torch\n")
    allowed, forbidden = parse_layers(DOC.read_text(encoding="utf-8"))
    modules = module_names(copy)
    graph = imports_of(modules)
    found = violations(allowed, forbidden, graph, modules, root=tmp_path)
    assert any("errors -> checkpoint is not an arrow" in p for p in found), found
    assert any("imports torch, which" in p for p in found), found
    assert any("reprotrain.errors" in c and "reprotrain.checkpoint.store" in c for c in cycles(graph))
    assert layer_cycles({**allowed, "errors": {"checkpoint"}}) != []


def test_the_old_checkpoint_integrations_cycle_would_fail(tmp_path):
    """The cycle issue 13 removed (checkpoint.store <-> integrations.objectstore), planted back, is caught."""
    import shutil

    copy = tmp_path / "reprotrain"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.json"))
    (copy / "integrations" / "objectstore.py").write_text("from reprotrain.checkpoint import store\n")
    store_py = copy / "checkpoint" / "store.py"
    store_py.write_text(store_py.read_text() + "\n\ndef _object_store():\n"
                        "    from reprotrain.integrations import objectstore\n")
    allowed, forbidden = parse_layers(DOC.read_text(encoding="utf-8"))
    modules = module_names(copy)
    graph = imports_of(modules)
    assert any("checkpoint -> integrations is not an arrow" in p
               for p in violations(allowed, forbidden, graph, modules, root=tmp_path))
    assert ["reprotrain.checkpoint.store", "reprotrain.integrations.objectstore"] in cycles(graph)


@pytest.mark.parametrize("line", ["cli => training", "a -> b -> c",
                                  "cycle reprotrain.checkpoint.reader, reprotrain.checkpoint.sealed"])
def test_a_malformed_layers_line_is_an_error(line):
    with pytest.raises(AssertionError, match="neither"):
        parse_layers(f"```layers\nerrors ->\n{line}\n```\n")
