"""The published contract: docs/schemas/ and docs/events.md match the code, the schemas agree
with the parsers, and the events we emit name their schema in `dataschema`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from shared.errors import InvalidEvent
from shared.events import PAYLOADS, Payload, make_event
from shared.events import types as t
from shared.events.schemas import schema_of
from tests.events.test_events import DATA, INVALID, VALID, _with
from tools import gen_events

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "docs" / "schemas"

# Problems only the parser finds: they compare fields with each other or ask croniter/zoneinfo.
BEYOND_A_SCHEMA = ("duplicate node id", "names no node", "cron:", "timezone:", "updatedAt:")


def test_the_schema_files_are_generated_from_the_declarations() -> None:
    """Run `python -m tools.gen_events` when this fails."""
    wanted = gen_events.schema_files()
    on_disk = {p.name: p.read_text() for p in SCHEMAS.glob("*.json")}
    assert sorted(on_disk) == sorted(wanted)
    stale = [name for name, text in wanted.items() if on_disk[name] != text]
    assert stale == []


def test_the_event_reference_is_generated_from_the_catalogue() -> None:
    """Run `python -m tools.gen_events` when this fails."""
    assert (ROOT / "docs" / "events.md").read_text() == gen_events.events_md()


@pytest.mark.parametrize("event_type", sorted(t.ALL_TYPES), ids=t.short)
def test_every_schema_is_a_valid_2020_12_schema_named_by_its_dataschema(event_type: str) -> None:
    schema = json.loads((SCHEMAS / f"{t.short(event_type)}.json").read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$id"] == t.dataschema(event_type)
    assert schema["$id"].endswith(f"/{t.short(event_type)}.json")


def _validator(cls: type[Payload]) -> Draft202012Validator:
    event_type = next(e for e, c in sorted(PAYLOADS.items()) if c is cls)
    return Draft202012Validator(schema_of(event_type))


@pytest.mark.parametrize("cls", list(VALID), ids=lambda c: c.__name__)
def test_the_schema_accepts_the_valid_example(cls: type[Payload]) -> None:
    errors = list(_validator(cls).iter_errors(copy.deepcopy(VALID[cls])))
    assert errors == []


def _is_json(value: Any) -> bool:
    return value is ... or value == value  # NaN cannot be sent as JSON at all


SCHEMA_CASES = [
    case for case in INVALID if not any(m in case[3] for m in BEYOND_A_SCHEMA) and _is_json(case[2])
]


@pytest.mark.parametrize(
    ("cls", "path", "value", "problem"),
    SCHEMA_CASES,
    ids=[f"{c.__name__}.{p}={'removed' if v is ... else v!r}" for c, p, v, _ in SCHEMA_CASES],
)
def test_the_schema_refuses_what_the_parser_refuses(
    cls: type[Payload], path: str, value: Any, problem: str
) -> None:
    data = _with(cls, path, value)
    with pytest.raises(InvalidEvent):
        cls.parse(copy.deepcopy(data))
    assert not _validator(cls).is_valid(json.loads(json.dumps(data)))


@pytest.mark.parametrize("cls", list(DATA), ids=lambda c: c.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_what_the_parser_accepts_and_writes_the_schema_accepts(
    cls: type[Payload], data: st.DataObject
) -> None:
    drawn = data.draw(DATA[cls])
    validator = _validator(cls)
    assert validator.is_valid(drawn), [e.message for e in validator.iter_errors(drawn)]
    written = cls.parse(drawn).to_data()
    assert validator.is_valid(json.loads(json.dumps(written)))


@pytest.mark.parametrize("event_type", sorted(t.ALL_TYPES - t.STEP_RESULT_TYPES), ids=t.short)
def test_an_emitted_event_names_its_schema(event_type: str) -> None:
    event = make_event(event_type, {}, event_id="e-1", source="/component-orchestrator/x")
    cloud = event.to_cloudevent(authtoken="signed")
    assert cloud["dataschema"] == t.dataschema(event_type)
    assert (SCHEMAS / cloud["dataschema"].rsplit("/", 1)[1]).is_file()
    assert "dataschema" not in event.to_json()  # derived from the type: the outbox is unchanged


def test_a_type_outside_the_catalogue_names_no_schema() -> None:
    event = make_event("com.example.other", {}, event_id="e-1", source="/x")
    assert "dataschema" not in event.to_cloudevent().get_attributes()
