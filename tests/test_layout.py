"""The package's folders are its layers: no import cycles, and imports only point down."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "flowprep"
# a layer may import itself and the layers listed after it
LAYERS = {
    "cli": {"train", "run", "store", "flow", "dataset", "models", "console", "atomic", "<root>"},
    "train": {"store", "flow", "dataset", "models", "console", "atomic"},
    "run": {"store", "flow", "dataset", "atomic"},
    "store": {"flow", "atomic"},
    "flow": {"dataset", "atomic"},
    "dataset": {"atomic"},
    "models": {"atomic"},
    "console": set(),
    "atomic": set(),
}


def _imports() -> dict[str, set[str]]:
    names = {
        ".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__") for p in ROOT.rglob("*.py")
    }
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
                cycles.append(stack[stack.index(d) :] + [d])
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


RUN_FOLDER_NAMES = ("staging", "ledger", "run.json", "index.json", "index", "leases", ".run")


def test_only_the_run_state_module_spells_the_run_folder_layout():
    # "<name>.run/" paths (ledger, staging, index and its parts, leases, run.json) are built in one place
    names = "|".join(re.escape(n) for n in RUN_FOLDER_NAMES)
    quoted = re.compile(rf"""(["'])({names})\1""")
    spelled = []
    for p in ROOT.rglob("*.py"):
        if p.relative_to(ROOT).as_posix() == "run/state.py":
            continue
        for m in quoted.finditer(p.read_text()):
            spelled.append(f"{p.relative_to(ROOT)}: {m.group(0)}")
    assert spelled == []


# Renames that are not file writes, by "file: function": a folder published or moved aside in one
# step, or a file moved aside to be deleted.  Each says why it is not an atomic write.
RENAMES_ALLOWED = {
    "atomic.py: write_atomic": "the one atomic file write",
    "atomic.py: publish_file": "a finished file (a download) moved into place, fsynced first",
    "store/zarr_store.py: create_store": "a new store's root folder, built aside, appears in one rename",
    "store/zarr_store.py: publish": "a staged video folder moves into videos/ (the old one aside first with --overwrite)",
    "run/pipeline.py: _take_out": "a damaged video folder leaves the store at once, then is deleted",
    "run/lease.py: acquire": "a stale lease is moved aside so only one contender deletes it",
}


def _renames(tree: ast.AST) -> list[tuple[int, str, str]]:
    """(line, enclosing function, call) of every os.replace / os.rename and Path.replace / .rename."""
    found = []

    def visit(node: ast.AST, func: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            func = node.name
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("replace", "rename")
        ):
            target = node.func.value
            if isinstance(target, ast.Name) and target.id == "os":
                found.append((node.lineno, func, f"os.{node.func.attr}"))
            # a path's method takes one argument (str.replace two; dataclasses.replace keywords)
            elif len(node.args) == 1 and not node.keywords and not isinstance(target, ast.Constant):
                found.append((node.lineno, func, f".{node.func.attr}()"))
        for child in ast.iter_child_nodes(node):
            visit(child, func)

    visit(tree, "<module>")
    return found


def test_files_are_replaced_only_through_the_atomic_module():
    # one atomic write (temporary file beside the target, fsync, rename) instead of hand-written copies
    found = []
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT).as_posix()
        for line, func, call in _renames(ast.parse(p.read_text())):
            if f"{rel}: {func}" not in RENAMES_ALLOWED:
                found.append(f"{rel}:{line} {call} in {func}")
    assert found == []


def test_rgb_is_dequantized_in_one_place():
    # ``x / 127.5 - 1`` lives in flow/api.py (dequantize_rgb_); rawframes' 127.5 is denseflow's
    # 8-bit flow mapping, another rule
    found = []
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT).as_posix()
        if rel in ("flow/api.py", "store/rawframes.py"):
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Constant) and node.value == 127.5:
                found.append(f"{rel}:{node.lineno}")
    assert found == []


def test_the_weights_cache_folder_is_worked_out_in_one_place():
    spelled = [
        p.relative_to(ROOT).as_posix()
        for p in ROOT.rglob("*.py")
        if p.name != "cache.py" and re.search(r"""environ(\.get\(|\[)["']FLOWPREP_CACHE""", p.read_text())
    ]
    assert spelled == []


def test_a_blocks_flow_is_worked_out_in_one_place():
    # block_flow_int8 (flow/api.py): fewer than 2 frames -> no fields, else TV-L1 then int8, for
    # the pipeline, video_flow and predict alike (the flow worker quantizes on its device instead)
    found = []
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT).as_posix()
        if rel == "flow/api.py":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                "compute_flow",
                "quantize_flow",
            ):
                found.append(f"{rel}:{node.lineno}")
    assert found == []
