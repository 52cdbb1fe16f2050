"""The package's shape: imports go one way, modules and functions stay
small, and the command line's help does not load TensorFlow."""

import ast
import os
import subprocess
import sys

import pytest
from conftest import REPO

PACKAGE = os.path.join(REPO, "tl_keras")

# Each package may import from its own layer and the layers below it.
LAYERS = [
    {"tl_keras.errors", "tl_keras.io", "tl_keras.config",
     "tl_keras.version"},
    {"tl_keras.data", "tl_keras.models", "tl_keras.inference",
     "tl_keras.distribute"},
    {"tl_keras.export", "tl_keras.advisor"},
    {"tl_keras.training"},
    {"tl_keras.modes"},
    {"tl_keras.cli", "tl_keras.flagfiles", "tl_keras"},
]
MAX_MODULE_LINES = 360
MAX_FUNCTION_LINES = 60


def module_name(path):
    rel = os.path.relpath(path, REPO)[:-len(".py")].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def modules():
    for root, _, names in os.walk(PACKAGE):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                yield module_name(path), path


MODULES = dict(modules())


def imports_of(path):
    """Every tl_keras module `path` imports, at any depth of the code
    (deferred imports inside functions count too)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from tl_keras.x import y` imports tl_keras.x.y when y is a
            # module, else the name y of tl_keras.x.
            names = [f"{node.module}.{alias.name}"
                     if f"{node.module}.{alias.name}" in MODULES
                     else node.module for alias in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] == "tl_keras")
    return found


def layer_of(module):
    parts = module.split(".")
    for depth in (2, 1):
        top = ".".join(parts[:depth])
        for rank, layer in enumerate(LAYERS):
            if top in layer:
                return rank
    raise AssertionError(f"{module} is in no layer of this test")


def test_layers_cover_every_package():
    for module in MODULES:
        layer_of(module)


def test_imports_only_go_down():
    upward = []
    for module, path in MODULES.items():
        for target in imports_of(path):
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} -> {target}")
    assert not upward, upward


def test_no_import_cycle():
    graph = {m: sorted(imports_of(p) - {m}) for m, p in MODULES.items()}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for module in graph:
        if module not in state:
            visit(module)


def test_the_cycle_check_sees_a_deferred_import(tmp_path):
    # The old layout's cycle (train -> advisor at the top, advisor ->
    # train inside a function) is the kind this test must catch.
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from tl_keras.training import trainer\n")
    assert "tl_keras.training.trainer" in imports_of(str(path))


def test_modules_and_functions_are_small():
    too_long = []
    for module, path in MODULES.items():
        source = open(path).read()
        lines = len(source.splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{module}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{module}.{node.name}: {length} lines")
    assert not too_long, too_long


def test_help_does_not_import_tensorflow():
    code = ("import runpy, sys\n"
            "sys.argv = ['run.py', '--help']\n"
            "try:\n"
            "    runpy.run_path('run.py', run_name='__main__')\n"
            "except SystemExit:\n"
            "    pass\n"
            "print('tensorflow loaded:', 'tensorflow' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert "--approach" in out.stdout  # the help was printed
    assert "tensorflow loaded: False" in out.stdout


def test_public_names_resolve():
    import tl_keras

    for name in tl_keras.__all__:
        assert getattr(tl_keras, name) is not None, name


def test_saved_model_loads_after_import_keras_then_tl_keras(pretrained_base):
    # A new process: in this one the layers are registered already.
    code = ("import keras\n"
            "import tl_keras\n"
            f"model = keras.saving.load_model({pretrained_base!r})\n"
            "print('layers:', [type(layer).__name__ for layer in "
            "model.layers])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ImageNormalization" in out.stdout and "Backbone" in out.stdout
