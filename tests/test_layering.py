"""The package's layers point one way (config -> model -> data / sim -> training -> inference -> export /
deploy), no
module imports itself through others, and the schema imports without torch or the simulator."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

# Lower numbers may be imported by higher ones, never the reverse. `cli` and `outputs` are the
# entry points' helpers (config level: file names and error messages, no torch).
LAYERS = {
    "config": 0,
    "cli": 0,
    "outputs": 0,
    "model": 1,
    "data": 2,
    "sim": 2,
    "training": 3,
    "inference": 4,
    "export": 5,
    "deploy": 5,  # the policy server and the robot client (issue 23): above inference, beside export
    "learn": 6,  # continuous learning (issue 24): deploys, records, trains and evaluates
}
# The simulator writes its episodes with the data package's writer; nothing else of data.
SIM_MAY_IMPORT = {"vla.data.isaac", "vla.data.episodes"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every vla module -> the vla modules it imports anywhere in it (function-level imports too)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "vla").rglob("*.py")):
        name = module_name(path)
        found = set()
        tree = ast.parse(path.read_text())
        # `if TYPE_CHECKING:` imports exist for annotations only and never run.
        typing_only = {
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
            for n in ast.walk(block)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("vla.")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vla"):
                found.add(node.module)  # and `from vla.pkg import module` names a module too:
                found |= {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = found - {name}
    return graph


def package(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_no_module_imports_a_higher_layer():
    wrong = []
    for module, targets in imports().items():
        if module == "vla":
            continue
        for target in targets:
            src, dst = package(module), package(target)
            if src == dst:
                continue
            if LAYERS[dst] > LAYERS[src]:
                wrong.append(f"{module} -> {target}")
            elif src == "data" and dst == "sim":
                wrong.append(f"{module} -> {target} (data must not know the simulator)")
            elif src == "sim" and dst == "data" and not any(target.startswith(m) for m in SIM_MAY_IMPORT):
                wrong.append(f"{module} -> {target} (the simulator may use only the episode writer)")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    graph = imports()
    # A module importing a package imports its __init__; edges to unknown names (attributes) are dropped.
    graph = {m: {t for t in ts if t in graph} for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_schema_imports_without_torch_hydra_or_the_simulator():
    code = (
        "import sys, vla.config, vla.cli, vla.outputs; "
        "print(sorted(m for m in ('torch', 'transformers', 'mujoco', 'hydra', 'lightning') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_importing_the_simulator_changes_no_environment():
    code = "import os, vla.sim, vla.sim.evaluate; print(os.environ.get('MUJOCO_GL'))"
    env = {k: v for k, v in __import__("os").environ.items() if k != "MUJOCO_GL"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "None"
