"""Every reason the operator can put in a Degraded condition is listed in the README.

The reasons are read from the operator's source with `ast`, not from a list kept by hand:
- the first argument (or `reason=`) of every call to `SpecError`, `Problem` or `degraded`;
- every assignment to a `reason` name or attribute (the exception classes of `secrets`);
- a reason argument that is a name or a subscript is resolved through the module-level
  constants of the package (`_PERMANENT[exc.status]` gives Rejected and Forbidden).
An argument the test cannot resolve (anything but a literal, a constant, a parameter of
the enclosing function or an `.reason` attribute) fails the test: a new way of building
reasons must be taught here, not silently skipped.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "operator" / "mlflow_operator"
README = ROOT / "README.md"

# Calls whose first argument is a Degraded reason.
REASON_CALLS = {"SpecError", "Problem", "degraded"}
# Not Degraded reasons: the Degraded condition's reason when all is well, and the default
# of the `secrets.SecretProblem` base class, whose subclasses each set their own.
NOT_DEGRADED = {"AsExpected", "SecretProblem"}
# Condition reasons are CamelCase; other strings assigned to a `reason` (an admission
# webhook's message, an HTTP reason phrase being parsed) are not condition reasons.
CAMEL_CASE = re.compile(r"^[A-Z][a-z]+(?:[A-Z][a-z0-9]*)*$")
# A README table row: | `Reason` | meaning |
ROW = re.compile(r"^\|\s*`([A-Z][A-Za-z]+)`\s*\|\s*(.*?)\s*\|\s*$")


def _strings(node: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _callee(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _module_constants(trees: dict[Path, ast.Module]) -> dict[str, set[str]]:
    """Module-level `NAME = <literal strings>` of the whole package (dict values included)."""
    constants: dict[str, set[str]] = {}
    for tree in trees.values():
        for stmt in tree.body:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else \
                [stmt.target] if isinstance(stmt, ast.AnnAssign) and stmt.value else []
            for target in targets:
                if isinstance(target, ast.Name):
                    value = stmt.value
                    if isinstance(value, ast.Dict):
                        constants[target.id] = {v.value for v in value.values
                                                if isinstance(v, ast.Constant) and isinstance(v.value, str)}
                    elif isinstance(value, ast.Constant) and isinstance(value.value, str):
                        constants[target.id] = {value.value}
    return constants


def _scopes(tree: ast.Module) -> dict[ast.AST, tuple[set[str], ast.AST]]:
    """For every node: the parameter names of the functions around it, and the innermost one."""
    scope: dict[ast.AST, tuple[set[str], ast.AST]] = {}

    def visit(node: ast.AST, params: set[str], function: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            params = params | {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)}
            function = node
        for child in ast.iter_child_nodes(node):
            scope[child] = (params, function)
            visit(child, params, function)

    visit(tree, set(), tree)
    return scope


def _local_values(function: ast.AST, name: str) -> set[str] | None:
    """Strings assigned to a local variable of the function; None if it assigns none."""
    values: set[str] | None = None
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            values = (values or set()) | _strings(node.value)
    return values


def _reason_argument(call: ast.Call) -> ast.AST | None:
    for keyword in call.keywords:
        if keyword.arg == "reason":
            return keyword.value
    return call.args[0] if call.args else None


def emitted_reasons() -> dict[str, str]:
    """Reason -> where it was found (file:line)."""
    trees = {path: ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.rglob("*.py"))}
    constants = _module_constants(trees)
    found: dict[str, str] = {}
    unresolved: list[str] = []
    for path, tree in trees.items():
        scopes = _scopes(tree)
        where = lambda node: f"{path.relative_to(ROOT)}:{node.lineno}"  # noqa: E731
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _callee(node) in REASON_CALLS:
                arg = _reason_argument(node)
                if arg is None:
                    continue
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.setdefault(arg.value, where(node))
                elif isinstance(arg, ast.Name) and arg.id in constants:
                    for value in constants[arg.id]:
                        found.setdefault(value, where(node))
                elif isinstance(arg, ast.Subscript) and isinstance(arg.value, ast.Name) \
                        and arg.value.id in constants:
                    for value in constants[arg.value.id]:
                        found.setdefault(value, where(node))
                elif isinstance(arg, ast.Name) and arg.id in scopes[node][0]:
                    pass  # a parameter: its callers pass the reason, and they are checked
                elif isinstance(arg, ast.Name) and (local := _local_values(scopes[node][1], arg.id)) is not None:
                    for value in local:  # a local variable: the literals it may hold
                        found.setdefault(value, where(node))
                elif isinstance(arg, ast.Attribute) and arg.attr == "reason":
                    pass  # an exception's reason: its assignments are checked below
                else:
                    unresolved.append(f"{where(node)}: {ast.unparse(arg)}")
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                named = any((isinstance(t, ast.Name) and t.id == "reason")
                            or (isinstance(t, ast.Attribute) and t.attr == "reason") for t in targets)
                if named and node.value is not None:
                    for value in _strings(node.value):
                        found.setdefault(value, where(node))
    assert not unresolved, f"reasons this test cannot read (use a literal or a module constant): {unresolved}"
    return {reason: at for reason, at in found.items()
            if reason not in NOT_DEGRADED and CAMEL_CASE.match(reason)}


def readme_reasons() -> dict[str, str]:
    """The rows of the README's Degraded reasons table: reason -> meaning."""
    text = README.read_text()
    start = text.index("#### Degraded reasons")
    section = text[start:].split("\n#", 1)[0]
    return {m.group(1): m.group(2) for line in section.splitlines() if (m := ROW.match(line))}


def test_the_extraction_sees_every_kind_of_reason():
    reasons = emitted_reasons()
    # One of each way reasons are made today: a pydantic rule, a rule of ours, a render-time
    # check, the secrets' exception classes, a literal in reconcile, the HTTP status table.
    for known in ("InvalidSpec", "SqliteWithReplicas", "SecretNotFound", "SecretKeyNotFound",
                  "AdminSecretLost", "MigrationFailed", "OwnershipConflict", "Rejected", "Forbidden"):
        assert known in reasons, (known, sorted(reasons))


def test_readme_lists_every_degraded_reason_with_its_meaning():
    emitted, listed = emitted_reasons(), readme_reasons()
    missing = {reason: at for reason, at in emitted.items() if reason not in listed}
    assert not missing, f"Degraded reasons missing from README.md's table (reason: where emitted): {missing}"
    vague = [reason for reason, meaning in listed.items() if len(meaning.split()) < 3]
    assert not vague, f"README.md: give these reasons a one-line meaning: {vague}"
    stale = sorted(set(listed) - set(emitted))
    assert not stale, f"README.md lists reasons the operator never emits: {stale}"
