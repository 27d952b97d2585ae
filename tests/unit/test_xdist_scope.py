"""How `make test` splits the suite between its pytest-xdist workers (tests/conftest.py)."""

from __future__ import annotations

from tests.conftest import SHARED_STACK_FILES, xdist_scope
from tests.helpers import ROOT


def test_each_file_is_one_unit_of_work() -> None:
    assert xdist_scope("tests/unit/test_item.py::test_a") == "tests/unit/test_item.py"
    assert xdist_scope("tests/unit/test_item.py::test_b[x::y]") == "tests/unit/test_item.py"
    assert xdist_scope("tests/e2e/test_run.py::test_c") == "tests/e2e/test_run.py"


def test_the_files_sharing_the_e2e_stack_are_one_unit() -> None:
    scopes = {xdist_scope(f"{path}::test_x") for path in SHARED_STACK_FILES}
    assert len(SHARED_STACK_FILES) == 3 and len(scopes) == 1
    assert scopes != {"tests/e2e/test_run.py"}
    for path in SHARED_STACK_FILES:  # a renamed file would silently leave the group
        assert (ROOT / path).is_file(), path
