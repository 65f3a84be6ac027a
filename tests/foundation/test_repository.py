"""Rules about the repository itself: every module says its job, and the
dependency lock pins what pyproject.toml asks for (docs/development.md)."""

from __future__ import annotations

import ast
import importlib.util
from types import ModuleType

from support.foundation import REPO


def _check_lock() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_lock", REPO / "requirements" / "check_lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_module_opens_with_its_job() -> None:
    missing = []
    for path in sorted((REPO / "gatewayd").rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        if not doc or not doc.splitlines()[0].strip():
            missing.append(str(path.relative_to(REPO)))
    assert not missing, f"modules without a docstring saying their job: {missing}"


def test_lock_pins_every_dependency_with_hashes() -> None:
    check = _check_lock()
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    lock = (REPO / "requirements" / "lock.txt").read_text(encoding="utf-8")
    assert check.problems(pyproject, lock) == []


def test_lock_check_names_what_the_lock_lacks() -> None:
    check = _check_lock()
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    lock = (REPO / "requirements" / "lock.txt").read_text(encoding="utf-8")
    added = pyproject.replace('dependencies = [\n', 'dependencies = [\n    "not-a-locked-package>=1",\n', 1)
    raised = pyproject.replace('"pillow>=', '"pillow>=999.0,>=', 1)
    assert check.problems(added, lock) == ["not-a-locked-package>=1: not in the lock"]
    assert [p for p in check.problems(raised, lock) if p.startswith("pillow>=999.0")], "a floor above the pin is not noticed"
    assert check.problems(pyproject, lock.replace("--hash=sha256:", "")) != []
