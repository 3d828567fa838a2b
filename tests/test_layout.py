"""The package's layers, read from the source with ast (no imports, fast): the library below, the
recipes, the course and the command line above it, nothing low importing anything high, no import
cycle, every command in `mambaft --help`, and no script entry point outside mambaft/cli/."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from mambaft.cli import COMMANDS, usage

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mambaft"
# Layers from the top: a module may import from its own layer and the ones below, never above.
LAYERS = ("mambaft.cli", "mambaft.course", "mambaft.recipes")
# The only script entry points outside mambaft/cli/: `python -m mambaft` (the command table), the
# plan's `accelerate launch -m mambaft.finetune`, and `python -m mambaft.bench`, whose worker processes
# start the same way.
ENTRY_SHIMS = {"mambaft.__main__", "mambaft.finetune", "mambaft.bench.__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}
TREES = {name: ast.parse(p.read_text(encoding="utf-8"), str(p)) for name, p in MODULES.items()}


def layer(name: str) -> int:
    """0 for the library, higher for the layers above it (cli highest)."""
    for i, top in enumerate(LAYERS):
        if name == top or name.startswith(top + "."):
            return len(LAYERS) - i
    return 0


def from_target(name: str, node: ast.ImportFrom) -> str:
    """The module a from-import of module `name` reads from (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    base = name.split(".") if MODULES[name].name == "__init__.py" else name.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imported(name: str, node: ast.AST) -> list[str]:
    """The mambaft modules an import statement of module `name` loads (a from-import of a submodule
    counts as that submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("mambaft")]
    if not isinstance(node, ast.ImportFrom):
        return []
    target = from_target(name, node)
    if not target.startswith("mambaft"):
        return []
    subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
    return subs or [target]


def imports(name: str, top_level_only: bool) -> set[str]:
    tree = TREES[name]
    if top_level_only:   # statements that run on import: the module body, its if/try blocks
        nodes, stack = [], list(tree.body)
        while stack:
            n = stack.pop()
            nodes.append(n)
            if isinstance(n, (ast.If, ast.Try)):
                stack += n.body + n.orelse + getattr(n, "finalbody", []) + \
                    [s for h in getattr(n, "handlers", []) for s in h.body]
    else:
        nodes = list(ast.walk(tree))
    return {m for n in nodes for m in imported(name, n)}


def test_every_imported_mambaft_module_exists():
    """Every import of a mambaft module, in the package, the tests and the notebooks, names a file of
    this tree (an installed copy elsewhere would otherwise answer for a module that moved)."""
    # (mambaft/hf/files/ is the code an exported folder carries: it imports the model files written
    # beside it there, see mambaft.hf.ship, and is never imported inside the package)
    missing = [f"{name} imports {m}" for name in MODULES for m in imports(name, top_level_only=False)
               if m not in MODULES and not name.startswith("mambaft.hf.files")]
    sources = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in sorted(ROOT.glob("tests/*.py"))}
    for nb in sorted(ROOT.glob("notebooks/*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        sources[str(nb.relative_to(ROOT))] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    for where, text in sources.items():
        for m in re.finditer(r"^\s*(?:from (mambaft[\w.]*) import|import (mambaft[\w.]*))", text, re.M):
            target = m.group(1) or m.group(2)
            if target not in MODULES:
                missing.append(f"{where} imports {target}")
    assert not missing, "\n".join(sorted(missing))


def test_every_imported_name_exists():
    """`from mambaft.X import name`, also inside functions, in the package, the tests and the notebooks:
    the name is defined there. A function-local import of a renamed name fails only when it runs (a
    merge left `from mambaft.train import checkpoints` in a course helper after the module's rename)."""
    import importlib

    sources = {name: TREES[name] for name in MODULES if not name.startswith("mambaft.hf.files")}
    for p in sorted(ROOT.glob("tests/*.py")):
        sources[f"tests.{p.stem}"] = ast.parse(p.read_text(encoding="utf-8"))
    for nb in sorted(ROOT.glob("notebooks/*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        sources[nb.name] = ast.parse("\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code"))
    missing = []
    for name, tree in sources.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = from_target(name, node) if name in MODULES else (node.module or "") * (node.level == 0)
            if target not in MODULES:
                continue   # not ours, or a submodule import (test_every_imported_mambaft_module_exists)
            module = importlib.import_module(target)
            missing += [f"{name}:{node.lineno} {target}.{a.name}" for a in node.names
                        if a.name != "*" and not hasattr(module, a.name) and f"{target}.{a.name}" not in MODULES]
    assert not missing, "\n".join(missing)


def test_nothing_imports_a_layer_above_its_own():
    """Function-local imports count too: the library never reaches up into recipes, course or cli."""
    wrong = sorted(f"{name} imports {m}" for name in MODULES for m in imports(name, top_level_only=False)
                   if layer(m) > layer(name) and name not in ENTRY_SHIMS)
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("top_level_only", [True, False], ids=["module-level", "function-local too"])
def test_no_import_cycle(top_level_only):
    """Function-local imports count too: one hid chat.session -> checkpoint -> hf.export -> chat.session
    (the export read the chat's settings; they now live in mambaft.chat.settings)."""
    graph = {name: {m for m in imports(name, top_level_only=top_level_only) if m in MODULES and m != name}
             for name in MODULES}
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


def test_script_entry_points_live_in_cli_only():
    """No `if __name__ == "__main__"` block, `__main__.py` or `def main` in a library module."""
    found = []
    for name, tree in TREES.items():
        if name.startswith("mambaft.cli") or name in ENTRY_SHIMS:
            continue
        if MODULES[name].name == "__main__.py":
            found.append(f"{name}: a __main__ module")
        for n in tree.body:
            if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test):
                found.append(f"{name}:{n.lineno}: if __name__ == '__main__'")
            if isinstance(n, ast.FunctionDef) and n.name == "main":
                found.append(f"{name}:{n.lineno}: def main")
    assert not found, "\n".join(found)


def test_every_command_module_is_in_the_table_and_the_help():
    """mambaft/cli/<name>.py <-> COMMANDS[name], each with a main(argv) and a line in --help."""
    cli_modules = {n for n in MODULES if n.startswith("mambaft.cli.")}
    table_modules = {module for _, module, _ in COMMANDS.values()}
    assert cli_modules <= table_modules, f"not in COMMANDS: {sorted(cli_modules - table_modules)}"
    help_text = usage()
    for command, (_, module, _) in COMMANDS.items():
        assert module in MODULES, f"{command}: no module {module}"
        assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in TREES[module].body), module
        assert re.search(rf"^  {re.escape(command)} ", help_text, re.M), f"{command} missing from --help"
        if module.startswith("mambaft.cli."):
            assert module == "mambaft.cli." + command.replace("-", "_"), f"{command}: lives in {module}"


def test_documented_commands_exist():
    """Every `python -m` of a mambaft module and every `mambaft COMMAND` spelled in the docs, notebooks,
    configs, tests and docstrings runs: a known entry point, a known command."""
    files = [ROOT / "README.md", ROOT / "Makefile", *ROOT.glob(".ci/*"), *ROOT.glob("notebooks/*.ipynb"),
             *ROOT.glob("benchmarks/**/*.md"), *ROOT.glob("benchmarks/**/*.py"), *ROOT.glob("configs/**/*"),
             *ROOT.glob("docs/**/*.md"), *ROOT.glob("tests/*.py"), *MODULES.values()]
    entry = {"mambaft", *(n.removesuffix(".__main__") for n in ENTRY_SHIMS)}
    bad = []
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        for m in re.finditer(r"-m (mambaft[\w.]*)", text):
            if m.group(1) not in entry:
                bad.append(f"{f.relative_to(ROOT)}: -m {m.group(1)}")
        # a command line: `mambaft X` in backticks, a make recipe, or an example line indented by four
        # spaces (docstrings, README code blocks) with an option or a comment on it
        for m in re.finditer(r"(?:`|\$\(BIN\)/|^ {4}(?:\$ )?(?=mambaft [a-z-]+\b.*(?: --?\w|#)))"
                             r"mambaft ([a-z][a-z-]*)(?=[`\s]|$)", text, re.M):
            if m.group(1) not in COMMANDS:
                bad.append(f"{f.relative_to(ROOT)}: mambaft {m.group(1)}")
    assert not bad, "\n".join(sorted(set(bad)))
