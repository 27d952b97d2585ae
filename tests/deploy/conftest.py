from __future__ import annotations

import pytest

from tests.deploy.support import Doc, docs_of


@pytest.fixture
def docs(request: pytest.FixtureRequest) -> list[Doc]:
    """The manifests of one source, given by indirect parametrization: "modules" (the module
    folders' files) or "overlay:<name>" (rendered once per session)."""
    source: str = request.param
    return docs_of(source)
