"""The webhook's event contract, docs/events.schema.json, as the tests check it: the unit
test holds each service's event functions to it, and the end-to-end stack holds every event
its webhook inbox received to it."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Any

import jsonschema  # type: ignore[import-untyped]

from tests.helpers import ROOT

SCHEMA_FILE = ROOT / "docs" / "events.schema.json"


@functools.cache
def schema() -> dict[str, Any]:
    return dict(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))


@functools.cache
def validator() -> Any:
    jsonschema.Draft202012Validator.check_schema(schema())
    return jsonschema.Draft202012Validator(schema())


def problems(event: dict[str, Any]) -> list[str]:
    """Each way ``event`` breaks the schema, as "path: message" (empty when it conforms)."""
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(event)'}: {e.message}"
        for e in validator().iter_errors(event)
    ]


def assert_valid(events: Iterable[dict[str, Any]]) -> None:
    bad = {json.dumps(e, sort_keys=True): problems(e) for e in events}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, "events that break docs/events.schema.json:\n" + "\n".join(
        f"{event}\n  {'; '.join(why)}" for event, why in bad.items()
    )
