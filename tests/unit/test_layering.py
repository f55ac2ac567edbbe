"""Import lint over vlax/: the layer order, no cycles, imports at module level.

Reads every module with `ast` (imports nothing), so it runs in well under a second.

Layers, lowest first (a module may import its own layer's package and any lower layer):

  0  vlax (the lazy root package), vlax.errors, vlax.utils, vlax.config (import each other)
  1  vlax.models, vlax.actions                (these two do not import each other)
  2  vlax.checkpoints | vlax.envs             (weights on disk <-> params of a model config;
                                              simulators and scripted experts)
  3  vlax.data
  4  vlax.training | vlax.inference | vlax.evaluation   (siblings: see SIDEWAYS)
  5  vlax.cli

Function-level imports are allowed only
  * of HEAVY packages (slow to import or optional), in a module that does not already
    import them at module level: e.g. `vlax.data.sequence` is imported by `vlax.Policy`
    and must not load TensorFlow;
  * of a vlax module that would load such a package that the importing module does not
    (computed here from the module-level imports, transitively);
  * in `vlax.cli`, where CLI_STARTUP_HEAVY counts as HEAVY too: each subcommand imports
    its module when it runs, so that `vlax --help` starts in a tenth of a second;
  * listed in KNOWN_VIOLATIONS (what is left of the redesign; the list must only shrink).
"""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2] / "vlax"

LAYERS = (
    ("vlax", "vlax.errors", "vlax.utils", "vlax.config"),
    ("vlax.models", "vlax.actions"),
    ("vlax.checkpoints", "vlax.envs"),
    ("vlax.data",),
    ("vlax.training", "vlax.inference", "vlax.evaluation"),
    ("vlax.cli",),
)

# vlax.envs sits at layer 2 so that data and evaluation may import it, but of vlax it may
# import only these (an env needs no model, checkpoint or config).
ENVS = "vlax.envs"
ENVS_MAY_IMPORT = ("vlax.envs", "vlax.errors", "vlax.utils")
# MuJoCo's EGL rendering crashes in a process that has imported TensorFlow: the Meta-World
# env, its expert worker and the closed-loop evals never import it, not even lazily.
TF_PACKAGES = ("tensorflow", "tensorflow_datasets")

# Allowed imports between packages of the same layer: (importer, imported) -> why.
SIDEWAYS = {
    ("vlax.evaluation", "vlax.inference"):
        "evaluation scores a checkpoint through the same Policy a robot would run",
}

# Top-level package -> why it may be imported inside a function.
HEAVY = {
    "tensorflow": "seconds to import and ~0.5 GB: Policy, the CLI and the TF-free data "
                  "modules must not load it",
    "tensorflow_datasets": "imports TensorFlow",
    "orbax": "slow to import; only needed when a checkpoint is read or written",
    "matplotlib": "slow to import; only for plots",
    "torch": "optional ([torch] extra: LeRobot/HF converters)",
    "transformers": "optional ([torch] extra)",
    "lerobot": "optional ([torch] extra)",
    "metaworld": "optional (Meta-World evaluation)",
    "mujoco": "optional (Meta-World evaluation)",
    "gymnasium": "optional (Meta-World evaluation)",
    "av": "optional (rollout videos)",
    "imageio": "optional (rollout videos / GIFs)",
    "websockets": "optional (vlax serve --protocol openpi)",
    "wandb": "optional (logging.wandb)",
    "libtpu": "optional (vlax plan)",
}

# For `vlax.cli` only, these count as HEAVY too: `vlax --help` must not wait for what its
# subcommands need. Import times from `python -X importtime` (cumulative), 2026-12-01, on
# the busy 2-core dev machine, where `vlax --help` takes 0.08-0.11 s wall in all and
# `python -c pass` 0.05 s.
CLI = "vlax.cli"
CLI_STARTUP_HEAVY = {
    "jax": "0.6-1.0 s to import",
    "numpy": "0.10-0.13 s to import",
    "ml_collections": "0.06-0.13 s to import (absl.logging)",
}

# (importing module, imported module) -> why it is still a function-level import.
# Every entry is debt: fix it and delete the line. A new function-level import that is
# neither here nor allowed above fails the test.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {
}


# Import cycles still to break (sorted module names) -> why.
KNOWN_CYCLES: dict[tuple[str, ...], str] = {
}


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in sorted(ROOT.rglob("*.py")):
    rel = path.relative_to(ROOT)
    if rel.parts[0] == "experiments":  # an untracked link to ../experiments in checkouts
      continue
    out[_module_name(path)] = path
  return out


MODULES = _modules()


def _resolve(name: str) -> str:
  """The longest prefix of a dotted name that is a vlax module."""
  while name and name not in MODULES:
    name = name.rpartition(".")[0]
  return name


def _imports(path: pathlib.Path, module: str):
  """(imported name, is module level, line) for every import in a file. For
  `from P import N`, the name is P.N when that is a module, else P."""
  tree = ast.parse(path.read_text(), str(path))
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  out = []

  def visit(node, in_function):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, ast.Import):
        out.extend((a.name, not in_function, child.lineno) for a in child.names)
      elif isinstance(child, ast.ImportFrom):
        base = child.module or ""
        if child.level:
          parts = package.split(".")
          parts = parts[:len(parts) - child.level + 1]
          base = ".".join(parts + ([base] if base else []))
        for a in child.names:
          full = f"{base}.{a.name}"
          out.append((full if full in MODULES else base, not in_function, child.lineno))
      visit(child, in_function or isinstance(
          child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

  visit(tree, False)
  return out


IMPORTS = {m: _imports(p, m) for m, p in MODULES.items()}


def _layer(module: str) -> tuple[int, str]:
  """(layer index, the layer's package) of a vlax module."""
  best = None
  for i, names in enumerate(LAYERS):
    for name in names:
      if module == name or module.startswith(name + "."):
        if best is None or len(name) > len(best[1]):
          best = (i, name)
  assert best is not None, f"{module} is in no layer: add it to LAYERS"
  return best


def _heavy_loaded() -> dict[str, set[str]]:
  """Module -> the HEAVY (and CLI_STARTUP_HEAVY) packages importing it loads
  (module-level imports, transitively)."""
  memo: dict[str, set[str]] = {}

  def visit(module, stack):
    if module in memo:
      return memo[module]
    if module in stack:
      return set()
    found = set()
    for name, top_level, _ in IMPORTS[module]:
      if not top_level:
        continue
      root = name.split(".")[0]
      if root in HEAVY or root in CLI_STARTUP_HEAVY:
        found.add(root)
      elif root == "vlax" and _resolve(name):
        found |= visit(_resolve(name), stack | {module})
    memo[module] = found
    return found

  for m in MODULES:
    visit(m, frozenset())
  return memo


def _function_level_imports() -> list[tuple[str, str, int]]:
  """(module, imported, line) of every function-level import not allowed by HEAVY."""
  heavy = _heavy_loaded()
  out = []
  for module, imports in IMPORTS.items():
    lazy_ok = set(HEAVY) | (set(CLI_STARTUP_HEAVY) if module == CLI else set())
    loaded = heavy[module] & lazy_ok
    for name, top_level, line in dict.fromkeys(imports):
      if top_level:
        continue
      root = name.split(".")[0]
      if root in lazy_ok and root not in loaded:
        continue
      if root == "vlax" and (heavy[_resolve(name) or "vlax"] & lazy_ok) - loaded:
        continue  # importing it at module level would load a heavy package
      out.append((module, name, line))
  return out


def _graph() -> dict[str, set[str]]:
  graph = {m: set() for m in MODULES}
  for module, imports in IMPORTS.items():
    for name, _, _ in imports:
      target = _resolve(name) if name.split(".")[0] == "vlax" else ""
      if target and target != module:
        graph[module].add(target)
  return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
  index, low, on_stack, stack, out = {}, {}, set(), [], []

  def strong(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        strong(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      strong(v)
  return out


def test_every_module_is_in_a_layer():
  for module in MODULES:
    _layer(module)


def test_lower_layers_never_import_higher_ones():
  bad = []
  for module, imports in IMPORTS.items():
    lm, pm = _layer(module)
    for name, _, line in imports:
      if name.split(".")[0] != "vlax" or not _resolve(name):
        continue
      li, pi = _layer(_resolve(name))
      if pm == pi or li < lm or li == lm == 0 or (pm, pi) in SIDEWAYS:
        continue
      bad.append(f"{MODULES[module].relative_to(ROOT.parent)}:{line}: {module} (layer "
                 f"{lm}, {pm}) imports {name} (layer {li}, {pi})")
  assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_envs_import_only_errors_and_utils():
  bad = [f"{MODULES[m].relative_to(ROOT.parent)}:{line}: {m} imports {name}"
         for m, imports in IMPORTS.items() if m == ENVS or m.startswith(ENVS + ".")
         for name, _, line in imports
         if name.split(".")[0] == "vlax" and not any(
             name == p or name.startswith(p + ".") for p in ENVS_MAY_IMPORT)]
  assert not bad, (f"{ENVS} may import only {', '.join(ENVS_MAY_IMPORT)} of vlax:\n"
                   + "\n".join(bad))


def test_envs_never_import_tensorflow():
  """Not at module level (also through other modules), nor inside a function."""
  envs = [m for m in MODULES if m == ENVS or m.startswith(ENVS + ".")]
  assert "vlax.envs.metaworld_experts" in envs
  heavy = _heavy_loaded()
  bad = [f"{m} loads {sorted(heavy[m] & set(TF_PACKAGES))}" for m in envs
         if heavy[m] & set(TF_PACKAGES)]
  bad += [f"{MODULES[m].relative_to(ROOT.parent)}:{line}: {m} imports {name}"
          for m in envs for name, _, line in IMPORTS[m]
          if name.split(".")[0] in TF_PACKAGES]
  assert not bad, "TensorFlow in vlax.envs (MuJoCo's EGL crashes next to it):\n" + \
      "\n".join(bad)


def test_no_import_cycles():
  cycles = [c for c in _cycles(_graph()) if tuple(c) not in KNOWN_CYCLES]
  assert not cycles, "import cycles (module-level and function-level imports): " + \
      "; ".join(" <-> ".join(c) for c in cycles)


def test_imports_are_at_module_level():
  found = _function_level_imports()
  new = [f"{MODULES[m].relative_to(ROOT.parent)}:{line}: import of {name} inside a "
         f"function" for m, name, line in found if (m, name) not in KNOWN_VIOLATIONS]
  assert not new, ("imports belong at module level (lazy only for HEAVY packages, see "
                   "tests/unit/test_layering.py):\n" + "\n".join(new))


def test_known_violations_are_still_there():
  """A fixed violation must leave KNOWN_VIOLATIONS (the list only shrinks)."""
  found = {(m, name) for m, name, _ in _function_level_imports()}
  stale = sorted(set(KNOWN_VIOLATIONS) - found)
  assert not stale, f"fixed: remove from KNOWN_VIOLATIONS: {stale}"


# vlax.data.metaworld_demos: the Meta-World expert worker's spawned child re-imports the
# demo script, which imports it.
@pytest.mark.parametrize("module", ["vlax.inference.policy", "vlax.data.sequence",
                                    "vlax.checkpoints.weights", "vlax.cli",
                                    "vlax.data.metaworld_demos"])
def test_light_modules_do_not_load_tensorflow(module):
  assert "tensorflow" not in _heavy_loaded()[module]


@pytest.mark.parametrize("module", ["vlax.evaluation.run", "vlax.evaluation.metaworld_eval",
                                    "vlax.evaluation.rollout"])
def test_closed_loop_evals_do_not_load_tensorflow(module):
  """MuJoCo's EGL rendering crashes in a process that has imported TensorFlow."""
  assert "tensorflow" not in _heavy_loaded()[module]


def test_cli_help_loads_no_subcommand_dependency():
  """`vlax --help` builds the parser without jax, numpy, TensorFlow, ... (checked in a
  fresh interpreter: the lint above sees only the import statements)."""
  slow = sorted(set(HEAVY) | set(CLI_STARTUP_HEAVY))
  code = ("import sys, vlax.cli; vlax.cli.build_parser().format_help(); "
          f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({slow!r})))")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                     timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT.parent)})
  assert r.returncode == 0, r.stderr
  assert r.stdout.strip() == "[]", r.stdout
