"""The project's modules import each other in one direction: no cycles, not even through
imports inside functions, and nothing imports the dispatch back (docs/DESIGN.md)."""
import ast
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("efficientnet", "flags", "noisy_student", "tfrecords")


def _modules():
  """{dotted module name: path} of every module of the project's packages."""
  out = {}
  for package in PACKAGES:
    for folder, _, files in os.walk(os.path.join(REPO, package)):
      for name in files:
        if name.endswith(".py"):
          path = os.path.join(folder, name)
          dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
          out[dotted.removesuffix(".__init__")] = path
  return out


def _imports(path, modules):
  """The project modules `path` imports anywhere in its body (functions included)."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
               else node.module for a in node.names]
    else:
      continue
    found.update(n for n in names if n in modules)
  return found


def _graph():
  modules = _modules()
  return {m: _imports(p, modules) - {m} for m, p in modules.items()}


def _cycles(graph):
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_no_import_cycles():
  graph = _graph()
  # A package's __init__ re-exports its modules; those importing a sibling by the package
  # path is the usual pattern, not a cycle of the code's logic.
  logic = {m: {d for d in deps if not graph.get(d) or not m.startswith(d + ".")}
           for m, deps in graph.items()}
  assert _cycles(logic) == []


def test_the_detector_finds_a_cycle():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("top", ["noisy_student.modes", "noisy_student.main"])
def test_nothing_below_imports_the_dispatch(top):
  importers = sorted(m for m, deps in _graph().items() if top in deps)
  assert set(importers) <= {"noisy_student.main", "noisy_student.__main__"}, importers


def _imports_apache_beam(path):
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
             [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
    if any(n == "apache_beam" or n.startswith("apache_beam.") for n in names):
      return True
  return False


def test_only_the_beam_package_imports_apache_beam():
  """Beam is an optional extra: nothing outside noisy_student/beam names it, and the beam
  package calls the libraries below the phase loop, never the loop or the dispatch."""
  modules = _modules()
  outside = sorted(m for m, p in modules.items()
                   if not m.startswith("noisy_student.beam") and _imports_apache_beam(p))
  assert outside == []
  above = {"noisy_student.pipeline", "noisy_student.modes", "noisy_student.context",
           "noisy_student.ablations", "noisy_student.main"}
  for m, deps in _graph().items():
    if m.startswith("noisy_student.beam"):
      assert not deps & above, (m, deps & above)


def test_the_command_line_loads_without_apache_beam():
  code = ("import sys; import noisy_student.main, noisy_student.modes, "
          "noisy_student.pipeline; assert 'apache_beam' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=300)
