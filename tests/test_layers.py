"""The package's folders are its architecture: data flows one way, from the shared base at the top
level through nn / diffusion / evaluation to pipeline, then tasks, then prompted, then the front door (cli and
pdiff_fast/__init__.py). Every import in pdiff_fast/, at module level or inside a function, is read
from the source and checked: none runs back up a layer or across to a sibling, and no chain of
imports comes back to where it started."""
import ast
from pathlib import Path

import pdiff_fast

PKG = Path(pdiff_fast.__file__).parent
BASE = {"config", "io", "data", "params", "distributed", "backend", "ops", "kernels", "_C"}
LAYER = {"nn": 1, "diffusion": 1, "evaluation": 1, "pipeline": 2, "tasks": 3, "prompted": 4}
FRONT_RANK = 5
FRONT = {"cli", "__main__", "__init__", "_aliases"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG).with_suffix("").parts
        name = ".".join(("pdiff_fast",) + parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """The pdiff_fast modules that `name` imports (absolute names), anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "pdiff_fast":
                continue
            if node.module:  # `from .. import x` imports x, not the package's front door
                found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from . import x`: maybe a module
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "pdiff_fast")
    return found


def _layer(name: str) -> tuple[int, str]:
    parts = name.split(".")
    if len(parts) == 1:
        return FRONT_RANK, "front"
    top = parts[1]
    if top in FRONT:
        return FRONT_RANK, "front"
    if top in BASE:
        return 0, "base"
    assert top in LAYER, f"{name}: a top-level module that is neither the shared base nor the front"
    return LAYER[top], top


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        targets = set()
        for named in _imports(name, path):
            imp = named
            while imp not in mods and "." in imp:  # a name inside a module: the module
                imp = imp.rsplit(".", 1)[0]
            if imp == "pdiff_fast" != named:  # pdiff_fast.kernels (kernels/, outside this folder): base
                continue
            if imp in mods and imp != name:
                targets.add(imp)
        graph[name] = targets
    return graph


def test_no_import_runs_back_up_or_across():
    wrong = []
    for name, targets in _graph().items():
        (rank, group) = _layer(name)
        for t in targets:
            (t_rank, t_group) = _layer(t)
            if t_group == group or t_rank < rank:
                continue
            if rank == FRONT_RANK:  # the front may import anything
                continue
            wrong.append(f"{name} ({group}) imports {t} ({t_group})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle():
    graph = _graph()
    # a package's __init__ importing its own modules, which import their siblings, is not a cycle
    edges = {n: {t for t in ts if not n.startswith(t + ".") and not (t == "pdiff_fast")} for n, ts in graph.items()}
    edges = {n: ts for n, ts in edges.items() if _layer(n)[0] < FRONT_RANK and not n.endswith("__init__")}
    state: dict[str, int] = {}
    cycles = []

    def visit(n, stack):
        state[n] = 1
        for t in sorted(edges.get(n, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n, [n])
    assert not cycles, "\n".join(cycles)


def test_no_source_file_over_about_450_lines():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if "ops" not in p.parts
            and (n := len(p.read_text().splitlines())) > 460}
    assert not long, long


def test_the_checker_sees_imports():
    graph = _graph()
    assert "pdiff_fast.evaluation.novelty" in graph["pdiff_fast.evaluation.judge"]
    assert "pdiff_fast.pipeline.pdiff" in graph["pdiff_fast.pipeline.study"]  # inside a function
    assert "pdiff_fast.pipeline.run_dir" in graph["pdiff_fast.tasks.parts"]
