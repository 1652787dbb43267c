"""Every public function and class of the package is documented and fully annotated."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxcompress"


def public_functions():
  for path in sorted(PACKAGE.rglob("*.py")):
    if any(part.startswith("_") and part != "__init__.py" for part in path.relative_to(PACKAGE).parts):
      continue
    tree = ast.parse(path.read_text())
    for node in tree.body:
      if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
        yield path.relative_to(PACKAGE.parent), node


def test_public_names_have_docstrings():
  missing = [
    f"{path}:{node.lineno} {node.name}" for path, node in public_functions() if ast.get_docstring(node) is None
  ]
  assert not missing, missing


def test_public_functions_are_annotated():
  missing = []
  for path, node in public_functions():
    if not isinstance(node, ast.FunctionDef):
      continue
    args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
    unannotated = [a.arg for a in args if a.annotation is None]
    unannotated += [f"*{a.arg}" for a in (node.args.vararg, node.args.kwarg) if a is not None and a.annotation is None]
    if unannotated or node.returns is None:
      missing.append(f"{path}:{node.lineno} {node.name} {unannotated}{'' if node.returns else ' -> ?'}")
  assert not missing, "\n".join(missing)
