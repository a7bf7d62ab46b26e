"""The layout shows the architecture: imports run one way (no module imports from a layer above
it), no import circle, and the kind of a model is decided in one function (``config.model_kind``).

Read from the source with ``ast`` (every import, at module level, inside functions and under
TYPE_CHECKING), so the test also sees imports that only run on some paths.
"""

import ast
import re
from pathlib import Path

import pytest

import difflab

SRC = Path(difflab.__file__).parent

# Lower layers first; a module may import from its own layer or the ones before it. Inside a
# layer the only rule is no circle.
LAYERS: list[tuple[str, ...]] = [
    ("difflab", "difflab.io", "difflab.distributed", "difflab.schedules"),  # plumbing
    ("difflab.diffusion", "difflab.samplers", "difflab.consistency", "difflab.editing",
     "difflab.device", "difflab.flow"),  # the formulas and the solvers: pure functions
    ("difflab.config",),  # frozen dataclasses, and the kind of a model
    ("difflab.data", "difflab.compose", "difflab.checkpoint", "difflab.models", "difflab.nn_numpy",
     "difflab.viz", "difflab.insides"),  # data, files, networks, pictures
    ("difflab.sampling",),  # checkpoint -> images; knows no trainer
    ("difflab.evaluation",),  # metrics, the evaluator network, reference statistics
    ("difflab.training",),  # the harness and the run directory; knows no objective
    ("difflab.objectives",),  # one module per trainer
    ("difflab.kinds",),  # the table: kind -> objective, loader, sampling plan
    ("difflab.cli", "difflab.web", "difflab.export", "difflab.__main__"),  # faces
]  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def layer_of(module: str) -> int:
    best = None
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or module.startswith(prefix + ".")
            if inside and (best is None or len(prefix) > best[1]):  # the longest prefix wins
                best = (rank, len(prefix))
    assert best is not None, f"{module} is in no layer of test_architecture.LAYERS"
    return best[0]


def imports_of(module: str) -> set[str]:
    """The difflab modules ``module`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {m for m in found if m in MODULES and m != module}


GRAPH = {module: imports_of(module) for module in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_from_a_layer_above_it(module):
    upward = sorted(m for m in GRAPH[module] if layer_of(m) > layer_of(module))
    assert not upward, f"{module} (layer {layer_of(module)}) imports {upward} from above it"


def test_there_is_no_import_circle():
    """Depth-first search for a back edge; a package's __init__ re-exporting its own modules
    is not a circle unless one of them imports the package back."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module], path[len(path) :] = 1, [module]
        for other in sorted(GRAPH[module]):
            if state.get(other) == 1:
                circle = [*path[path.index(other) :], other]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if other not in state:
                visit(other)
                path.pop()
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module)
    assert len(state) == len(MODULES)


def test_the_circle_check_finds_a_circle():
    """The search above reports a planted circle (so that a pass means something)."""
    GRAPH["difflab.config"].add("difflab.kinds")
    try:
        with pytest.raises(AssertionError, match=r"import circle: .*difflab\.config"):
            test_there_is_no_import_circle()
        assert layer_of("difflab.kinds") > layer_of("difflab.config")
    finally:
        GRAPH["difflab.config"].discard("difflab.kinds")


# The question "what kind of model is this?" asked of the optional config sections: ``.gan is
# None`` and the like, in an if, a ternary, a boolean or an assert. Code that knows the kind reads
# its section with ``RunConfig.section``.
KIND_TEST = re.compile(
    r"\.(gan|consistency|progressive|latent|autoencoder) is (not )?None|"
    r"\.(consistency|progressive) or "
)


def test_the_kind_of_a_model_is_decided_in_one_function():
    found = []
    for module, path in MODULES.items():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if KIND_TEST.search(line):
                found.append((module, number, line.strip()))
    config = MODULES["difflab.config"].read_text().splitlines()
    start = next(i for i, line in enumerate(config, 1) if line.startswith("def model_kind("))
    end = next(i for i, line in enumerate(config[start:], start + 1) if line.startswith("def "))
    outside = [f for f in found if not (f[0] == "difflab.config" and start < f[1] < end)]
    assert not outside, outside
    assert len(found) == 5  # model_kind's five branches
