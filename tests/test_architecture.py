"""The layers of docs/ARCHITECTURE.md: a module imports only from its own layer or lower ones, and
the import graph (module-level and function-level imports alike) has no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cwr_fast"

# lowest first; a module's layer is that of its longest listed prefix
LAYERS = [
    ["cwr_fast._C", "cwr_fast.errors", "cwr_fast.ops", "cwr_fast.op_checks", "cwr_fast.reference", "cwr_fast.options",
     "cwr_fast.outputs", "cwr_fast.runtime"],
    ["cwr_fast.data", "cwr_fast.models"],
    ["cwr_fast.attacks"],
    ["cwr_fast.classwise", "cwr_fast.report", "cwr_fast.api", "cwr_fast.evaluation"],
    ["cwr_fast.methods"],
    ["cwr_fast.defenses"],
    ["cwr_fast.training"],
    ["cwr_fast.train", "cwr_fast.evaluate", "cwr_fast.compare", "cwr_fast.compare_paired", "cwr_fast.__main__"],
    ["cwr_fast.study", "cwr_fast.reproduce"],  # the paper's study: nothing in the library imports it
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    best = None
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (level, len(prefix))
    return None if best is None else best[0]


def imports_of(path: Path, modules: set[str], source: str | None = None) -> set[str]:
    """The cwr_fast modules `path` imports, anywhere in the file (`from cwr_fast.x import y`
    counts as cwr_fast.x.y when that is a module)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                     for a in node.names]
        else:
            continue
        found.update(n for n in names if n.startswith("cwr_fast"))
    found.discard(me)
    return found


def graph(planted: dict[str, str] | None = None) -> dict[str, set[str]]:
    """{module: the modules it imports}; planted: {module: extra source appended to it}."""
    files = [p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts]
    modules = {module_name(p) for p in files}
    extra = planted or {}
    return {module_name(p): imports_of(p, modules, p.read_text() + extra.get(module_name(p), ""))
            for p in files}


def upward_imports(g) -> list[str]:
    return sorted(f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
                  for m, targets in g.items() for t in targets
                  if m != "cwr_fast" and layer_of(t) is not None and layer_of(t) > layer_of(m))


def cycles_in(g) -> list[str]:
    g = {m: t for m, t in g.items() if m != "cwr_fast"}  # the package itself only re-exports ops
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(g.get(node, ())):
            if nxt not in g:
                continue
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [])
    return cycles


def test_every_module_has_a_layer():
    assert [m for m in graph() if m != "cwr_fast" and layer_of(m) is None] == []


def test_no_module_imports_a_higher_layer():
    assert upward_imports(graph()) == []


def test_the_import_graph_has_no_cycles():
    assert cycles_in(graph()) == []


LAZY_UPWARD = "\n\ndef _planted():\n    from cwr_fast.training.config import TrainConfig\n"


def test_the_checks_see_a_planted_upward_import_and_cycle():
    # a function-level import from the data layer up into training: upward, and a cycle
    # (training.config imports the data registry)
    g = graph({"cwr_fast.data.registry": LAZY_UPWARD})
    assert any(line.startswith("cwr_fast.data.registry (layer 1) imports cwr_fast.training.config")
               for line in upward_imports(g))
    assert any("cwr_fast.data.registry" in c and "cwr_fast.training.config" in c for c in cycles_in(g))


# ---- issue 27: the rules a restructuring must keep -------------------------------------------

LONGEST_FUNCTION = 80  # lines, from `def` to the function's last line
STUDY = ("cwr_fast.study", "cwr_fast.reproduce")  # the paper's study and its command-line entry
EVALUATION_MUST_NOT_REACH = ("cwr_fast.training", "cwr_fast.methods", "cwr_fast.defenses", "cwr_fast.train")


def _in(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def long_functions(sources: dict[Path, str] | None = None) -> list[str]:
    """'path:line name (N lines)' of every function in cwr_fast/ longer than LONGEST_FUNCTION."""
    found = []
    files = sources or {p: p.read_text() for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    for path, source in files.items():
        for node in ast.walk(ast.parse(source, str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LONGEST_FUNCTION:
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({length} lines)")
    return sorted(found)


def study_importers(g) -> list[str]:
    return sorted(f"{m} imports {t}" for m, targets in g.items() if m != "cwr_fast" and not _in(m, STUDY)
                  for t in targets if _in(t, STUDY))


def reference_importers(g) -> list[str]:
    """The reference ops are the oracle and the eager backend: only the op layer reaches them."""
    return sorted(m for m, targets in g.items() if "cwr_fast.reference" in targets and m != "cwr_fast.ops")


def reachable(g, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        for t in g.get(m, ()):
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


def evaluation_reaches(g) -> list[str]:
    """What evaluating a model (the evaluate CLI, the Python API, the class-wise layer) could import
    of training, methods and defenses: nothing."""
    starts = ["cwr_fast.evaluate", "cwr_fast.api"] + [m for m in g if _in(m, ("cwr_fast.classwise",))]
    return sorted({m for s in starts for m in reachable(g, s) if _in(m, EVALUATION_MUST_NOT_REACH)})


def outcome_builders(g) -> list[str]:
    """Per-image outcomes are pure data: they neither import nor call the report builder."""
    return sorted(t for t in g.get("cwr_fast.classwise.outcomes", ())
                  if t in ("cwr_fast.classwise.analysis", "cwr_fast.classwise.report_data", "cwr_fast.report"))


def test_no_function_is_longer_than_80_lines():
    assert long_functions() == []


def test_the_library_never_imports_the_study():
    assert study_importers(graph()) == []


def test_only_the_op_layer_imports_the_reference_ops():
    assert reference_importers(graph()) == []


def test_evaluating_a_model_imports_no_training_method_or_defense_module():
    assert evaluation_reaches(graph()) == []


def test_outcomes_are_pure_data():
    assert outcome_builders(graph()) == []


def test_the_new_checks_see_planted_violations():
    long = "def planted():\n" + "    x = 1\n" * LONGEST_FUNCTION
    assert long_functions({PACKAGE / "planted.py": long}) == ["cwr_fast/planted.py:1 planted (81 lines)"]
    assert long_functions({PACKAGE / "planted.py": long.replace("    x = 1\n", "", 1)}) == []
    g = graph({"cwr_fast.report": "\n\ndef _planted():\n    from cwr_fast.study import findings\n",
               "cwr_fast.attacks.gradient": "\n\ndef _planted():\n    from cwr_fast import reference\n",
               "cwr_fast.classwise.stats": "\n\ndef _planted():\n    import cwr_fast.defenses.base\n"})
    assert any(line.startswith("cwr_fast.report imports cwr_fast.study") for line in study_importers(g))
    assert "cwr_fast.attacks.gradient" in reference_importers(g)
    assert "cwr_fast.defenses.base" in evaluation_reaches(g)
    g = graph({"cwr_fast.classwise.outcomes": "\n\ndef _planted():\n    from cwr_fast.classwise import analysis\n"})
    assert outcome_builders(g) == ["cwr_fast.classwise.analysis"]


# (compare.main still reads a damaged report's KeyError/TypeError as damage: its own diagnosis)
BUILT_IN_INPUT_ERRORS = {"ValueError", "FileNotFoundError", "FileExistsError"}


def mains_catching_built_in_errors(sources: dict[Path, str] | None = None) -> list[str]:
    """The `main` functions of cwr_fast that catch a built-in error class by name: a usage error is
    a UsageError raised where the input is checked, so catching ValueError would turn any internal
    bug into exit 2."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = (sources or {}).get(path, path.read_text())
        for node in ast.walk(ast.parse(source, str(path))):
            if isinstance(node, ast.FunctionDef) and node.name == "main":
                for handler in ast.walk(node):
                    if isinstance(handler, ast.ExceptHandler) and handler.type is not None:
                        names = {n.id for n in ast.walk(handler.type) if isinstance(n, ast.Name)}
                        if names & BUILT_IN_INPUT_ERRORS:
                            found.append(f"{module_name(path)}.main: except {sorted(names)}")
    return found


def test_no_command_line_catches_value_error_by_name():
    assert mains_catching_built_in_errors() == []


def test_the_main_check_sees_a_planted_catch():
    path = PACKAGE / "evaluate.py"
    planted = path.read_text() + "\n\ndef main():\n    try:\n        pass\n    except (ValueError, KeyError):\n        pass\n"
    assert mains_catching_built_in_errors({path: planted}) == ["cwr_fast.evaluate.main: except ['KeyError', 'ValueError']"]
