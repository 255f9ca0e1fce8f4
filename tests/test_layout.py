"""The house rules, read from the code's own imports (ast), so a change that breaks them fails here.

- the core (the modules directly in ``act_core/``) imports no wing (``diffusion``, ``llm``, ``cli``); the
  package face (``act_core/__init__.py``) may name a wing only inside a function (an adapter
  imported on first use: checked by the import test at the end);
- wings import the core and never each other (the CLI may import both wings: it is thin over them);
- no import circle anywhere in ``act_core`` (lazy imports inside functions count too);
- ``nodes/`` touches ComfyUI (``comfy``, ``comfy_api``, ``folder_paths``, ``comfy_extras``) only in
  ``comfy_compat.py`` and imports no top-level ``nodes``;
- importing ``act_core`` imports no wing and no diffusers / transformers.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WINGS = ("diffusion", "llm", "cli")
COMFY = ("comfy", "comfy_api", "folder_paths", "comfy_extras", "comfy_execution", "server")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, absolute_only: bool = False):
    """Absolute names of every module an ``import`` in ``path`` names (submodules included);
    ``absolute_only`` leaves out relative imports."""
    mod = _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level and absolute_only:
                continue
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target
            for a in node.names:
                yield f"{target}.{a.name}"


def _graph():
    files = {_module_name(p): p for p in (ROOT / "act_core").rglob("*.py")}
    edges = {}
    for mod, path in files.items():
        edges[mod] = {t for t in _imports(path) if t in files and t != mod}
    return files, edges


def _wing(mod: str):
    parts = mod.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in WINGS else (parts[1] if len(parts) == 2 and parts[1] in WINGS else None)


def test_core_imports_no_wing_and_wings_not_each_other():
    files, edges = _graph()
    bad = []
    for mod, targets in edges.items():
        src = _wing(mod)
        for t in targets:
            dst = _wing(t)
            if dst is None or dst == src:
                continue
            if mod == "act_core":  # the face: lazy adapters only (the import test below)
                continue
            if src is None:
                bad.append(f"core module {mod} imports the {dst} wing ({t})")
            elif src != "cli":
                bad.append(f"{src} wing module {mod} imports the {dst} wing ({t})")
    assert not bad, "\n".join(bad)


def test_no_import_circles():
    files, edges = _graph()
    # a package's __init__ importing its own submodules is not a circle unless they import it back
    circles, state, stack = [], {}, []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(edges[u]):
            if state.get(v) == 1:
                circles.append(" -> ".join(stack[stack.index(v):] + [v]))
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    # "act_core" itself is the package face: submodules never import it (checked below)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_nothing_imports_the_package_face_from_inside():
    files, edges = _graph()
    bad = [m for m, t in edges.items() if "act_core" in t and m != "act_core"]
    assert not bad, f"modules importing the package face act_core (import the module itself instead): {bad}"


def test_nodes_touch_comfyui_only_in_comfy_compat():
    bad = []
    for path in (ROOT / "nodes").glob("*.py"):
        for t in _imports(path, absolute_only=True):
            top = t.split(".")[0]
            if top in COMFY and path.name != "comfy_compat.py":
                bad.append(f"{path.name} imports {t}")
            if t == "nodes" or t.startswith("nodes."):
                bad.append(f"{path.name} imports the top-level package {t!r} (use relative imports)")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", ["act_core"])
def test_importing_the_core_loads_no_wing_and_no_framework(module):
    code = ("import sys, {m}; bad = sorted(k for k in sys.modules if k.split('.')[0] in ('diffusers', 'transformers') "
            "or k.startswith(('act_core.diffusion', 'act_core.llm', 'act_core.cli'))); print(bad)").format(m=module)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_test_modules_have_distinct_basenames():
    """tests/ has no __init__.py files, so two test modules of one basename stop a whole-suite run at collection."""
    seen = {}
    for p in sorted((ROOT / "tests").rglob("test_*.py")):
        if "_artifacts" in p.parts:
            continue
        assert p.name not in seen, f"{p.relative_to(ROOT)} and {seen[p.name].relative_to(ROOT)} share a basename: rename one"
        seen[p.name] = p
