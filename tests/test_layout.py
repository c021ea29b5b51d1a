"""The package's folders are its layers: no import cycles, and imports only point down."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "flowprep"
# a layer may import itself and the layers listed after it
LAYERS = {
    "cli": {"train", "run", "store", "flow", "dataset", "models", "console", "atomic", "<root>"},
    "train": {"store", "flow", "dataset", "models", "console", "atomic"},
    "run": {"store", "flow", "dataset"},
    "store": {"flow"},
    "flow": {"dataset"},
    "dataset": set(),
    "models": {"atomic"},
    "console": set(),
    "atomic": set(),
}


def _imports() -> dict[str, set[str]]:
    names = {".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__") for p in ROOT.rglob("*.py")}
    graph = {}
    for p in ROOT.rglob("*.py"):
        mod = ".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flowprep"):
                subs = {f"{node.module}.{a.name}" for a in node.names} & names
                deps |= subs or {node.module}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("flowprep")}
        graph[mod] = {d for d in deps if d in names and d != mod}
    return graph


def _layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[1] not in ("__main__",) else "<root>"


def test_no_import_cycles():
    graph = _imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(n, stack):
        state[n] = 1
        for d in graph[n]:
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[n] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_imports_point_down_the_layers():
    bad = []
    for mod, deps in _imports().items():
        layer = _layer(mod)
        if layer not in LAYERS:
            continue  # flowprep/__init__ and __main__: the top
        for d in deps:
            if _layer(d) != layer and _layer(d) not in LAYERS[layer]:
                bad.append(f"{mod} -> {d}")
    assert bad == []


def test_only_the_run_state_module_spells_the_run_folder_layout():
    # "<name>.run/" paths (ledger, staging, index parts, run.json) are built in one place
    spelled = []
    for p in ROOT.rglob("*.py"):
        if p.name == "state.py":
            continue
        text = p.read_text()
        for needle in ('"staging"', '"ledger"', '"run.json"', '"index.json"', '".run"'):
            if needle in text:
                spelled.append(f"{p.relative_to(ROOT)}: {needle}")
    assert spelled == []
