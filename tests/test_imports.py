"""The package's imports run one way: each minigpt module imports only modules below it.

The graph is read from the source (every `import` of a minigpt module, at module level or
inside a function), so an import hidden in a function to break a cycle is still a cycle.
The modules are found by listing the package directory, so new or split modules are covered.
The optional `minigpt_kernels` import (Triton, CUDA only) is not a minigpt module and is not counted.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minigpt"

# Imports of minigpt modules made inside a function (module -> imported module). The only one is
# the adapter that needs the optional lm-eval package; the edge still counts in the graph.
KNOWN_FUNCTION_LEVEL = {("minigpt.eval.evaluate", "minigpt.eval.lm_eval_adapter")}


def module_names() -> dict[str, Path]:
    """Every module of the package (name -> file), found by listing its directory."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py":  # a package's `python -m` entry point: it runs when imported
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: set[str]) -> list[tuple[str, bool]]:
    """(imported minigpt module, inside a function?) for every import statement in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # a relative import: resolve it against this module's package
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from minigpt import weights` imports the module minigpt.model.weights
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in child.names]
            for target in targets:
                # the longest minigpt module that the dotted name starts with
                parts = target.split(".")
                for i in range(len(parts), 0, -1):
                    candidate = ".".join(parts[:i])
                    if candidate in modules:
                        if candidate != name:
                            found.append((candidate, in_function))
                        break
            visit(child, nested)

    visit(tree, False)
    return found


def import_graph() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """(module -> minigpt modules it imports anywhere, the (module, import) pairs made inside functions)."""
    modules = module_names()
    graph, in_functions = {}, set()
    for name, path in modules.items():
        edges = imports_of(name, path, set(modules))
        graph[name] = {target for target, _ in edges}
        in_functions |= {(name, target) for target, inside in edges if inside}
    return graph, in_functions


def dependency_order(graph: dict[str, set[str]]) -> list[str]:
    """The modules, each after every module it imports; an AssertionError naming a cycle if there is one."""
    order, state = [], {}  # state: 1 visiting, 2 done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name) :] + [name]
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
        state[name] = 1
        for dep in sorted(graph[name]):
            visit(dep, path + [name])
        state[name] = 2
        order.append(name)

    for name in sorted(graph):
        visit(name, [])
    return order


def closure(graph: dict[str, set[str]], name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_the_package_is_found_and_the_graph_is_read():
    graph, _ = import_graph()
    for name in (
        "minigpt",
        "minigpt.model.config",
        "minigpt.model.model",
        "minigpt.model.weights",
        "minigpt.generate.sampling",
        "minigpt.generate.simple",
        "minigpt.generate.decoder",
        "minigpt.files",
    ):
        assert name in graph, name
    assert "minigpt.model.config" in graph["minigpt.model.model"]  # the reader sees real edges
    assert graph["minigpt.model.config"] & {"minigpt.model.model", "minigpt.model.weights"} == set()


def test_the_cycle_check_can_fail():
    try:
        dependency_order({"a": {"b"}, "b": {"c"}, "c": {"a"}})
    except AssertionError as e:
        assert "a -> b -> c -> a" in str(e)
    else:
        raise AssertionError("a cycle went unnoticed")


def test_imports_are_acyclic():
    graph, _ = import_graph()
    order = dependency_order(graph)
    position = {name: i for i, name in enumerate(order)}
    for name, deps in graph.items():
        for dep in deps:
            assert position[dep] < position[name], f"{name} imports {dep}, which is not below it"


def test_the_model_layer_imports_one_way():
    graph, _ = import_graph()
    assert "minigpt.model.model" not in closure(
        graph, "minigpt.model.weights"
    )  # weights reads tensors, never the model
    assert "minigpt.generate.simple" not in closure(graph, "minigpt.model.model")
    assert "minigpt.generate.simple" not in closure(graph, "minigpt.generate.decoder")
    assert closure(graph, "minigpt.generate.sampling") <= {"minigpt.model.config"}


def test_no_new_minigpt_imports_inside_functions():
    _, in_functions = import_graph()
    assert in_functions - KNOWN_FUNCTION_LEVEL == set()


SCRIPT = """
import importlib, json, sys
order, allowed = json.load(sys.stdin)
problems = []
for name in order:
    before = {m for m in sys.modules if m == "minigpt" or m.startswith("minigpt.")}
    importlib.import_module(name)
    loaded = {m for m in sys.modules if m == "minigpt" or m.startswith("minigpt.")} - before - {name}
    extra = loaded - set(allowed[name])
    if extra:
        problems.append(f"importing {name} also imported {sorted(extra)}")
print(json.dumps(problems))
"""


def run_imports(order: list[str], allowed: dict[str, list[str]]) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], input=json.dumps([order, allowed]), cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_each_module_imports_in_a_fresh_interpreter():
    graph, _ = import_graph()
    order = dependency_order(graph)

    # Importing minigpt.x.y runs minigpt/__init__.py and minigpt/x/__init__.py first, so what those
    # packages import may load too, and so may the packages above every module loaded.
    def with_packages(names: set[str]) -> set[str]:
        return names | {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 1)}

    def packages_of(name: str) -> set[str]:
        return {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}

    allowed = {}
    for name in order:
        above = set().union(*(closure(graph, p) | {p} for p in packages_of(name)))
        allowed[name] = sorted(with_packages(closure(graph, name) | above))
    assert run_imports(order, allowed) == []  # bottom up: each loads only what is below it
    assert run_imports(order[::-1], allowed) == []  # top down: what a cycle would break


def test_the_package_imports_its_names_when_first_used():
    """`import minigpt.files` loads no torch (the GPU suite's supervisor relies on it), and running a
    module with `python -m` finds it not yet imported; `from minigpt import GPT` still works."""
    code = (
        "import sys, minigpt.files\n"
        "assert 'torch' not in sys.modules and 'minigpt.model.model' not in sys.modules, sorted(sys.modules)\n"
        "from minigpt import GPT, GPTConfig, from_pretrained, save_pretrained, KVCache, PRESETS\n"
        "import minigpt\n"
        "assert GPT.__module__ == 'minigpt.model.model' and 'gpt2' in PRESETS and 'GPT' in dir(minigpt)\n"
        "try:\n"
        "    minigpt.nothing\n"
        "except AttributeError:\n"
        "    print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
