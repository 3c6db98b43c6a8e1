"""The typed surface (src/ackring/__init__.pyi, py.typed) names everything
ackring exports, and each stubbed function takes the keywords the real one
takes (a stub that lags the code misleads every type checker)."""

import ast
import inspect
import os

import ackring

STUB = os.path.join(os.path.dirname(ackring.__file__), "__init__.pyi")


def _stub_tree():
    with open(STUB) as f:
        return ast.parse(f.read())


def _top_level_names(tree):
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def test_stub_names_every_export():
    assert os.path.exists(os.path.join(os.path.dirname(STUB), "py.typed"))
    missing = sorted(set(ackring.__all__) - _top_level_names(_stub_tree()))
    assert not missing, "exported but not in __init__.pyi: %s" % missing


def test_stubbed_functions_take_the_real_keywords():
    for node in _stub_tree().body:
        if not isinstance(node, ast.FunctionDef) or not hasattr(ackring, node.name):
            continue
        real = inspect.signature(getattr(ackring, node.name))
        stub = {a.arg for a in node.args.args + node.args.kwonlyargs}
        want = {n for n, p in real.parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        assert want == stub, "%s: stub %s, code %s" % (node.name, sorted(stub), sorted(want))


def test_stub_classes_name_every_public_member():
    tree = _stub_tree()
    stub = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members = set()
            for m in node.body:
                if isinstance(m, ast.FunctionDef):
                    members.add(m.name)
                elif isinstance(m, ast.AnnAssign) and isinstance(m.target, ast.Name):
                    members.add(m.target.id)
            stub[node.name] = members
    for cls in ("Queue", "Producer", "Consumer", "Message", "Reservation", "Batch"):
        real = {a for a in dir(getattr(ackring, cls)) if not a.startswith("_")}
        missing = sorted(real - stub.get(cls, set()))
        assert not missing, "%s members not in __init__.pyi: %s" % (cls, missing)
