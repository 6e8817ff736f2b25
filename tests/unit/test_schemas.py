"""Each kind's JSON Schema is the one source of truth for the shape of its args: admission never accepts what
the schema refuses, never fails with anything but InvalidArgs, and publishes the very schema it checks."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import InvalidArgs, all_kinds

KINDS = all_kinds()
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5),
                                                                                          inner, max_size=3),
                      max_leaves=8)
plausible = st.sampled_from(["2024-03-26", "26-03-2024", "2024-3-26", " 2024-03-26 ", "2024-01-03", "2099-01-02",
                             "http://127.0.0.1/a.wav", "HTTP://a.example/b.wav", "https://x", "ftp://x", " http://a",
                             "http://" + "a" * 5000, ""])
args = st.dictionaries(st.sampled_from(["url", "date", "delay_ms", "other"]), plausible | values, max_size=3) | values


@pytest.mark.parametrize("name", sorted(KINDS))
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(candidate=args)
def test_a_kind_never_accepts_what_its_schema_refuses(name: str, candidate: Any) -> None:
    kind = KINDS[name]
    schema_ok = jsonschema.validators.validator_for(kind.schema)(kind.schema).is_valid(candidate)
    try:
        checked = kind.check(candidate)
    except InvalidArgs as refused:
        assert refused.message and "Traceback" not in refused.message
        return
    assert schema_ok, f"{name} accepted {candidate!r}, which its schema refuses"
    assert jsonschema.validators.validator_for(kind.schema)(kind.schema).is_valid(checked)


def test_the_cases_that_once_disagreed() -> None:
    euro, audio = KINDS["euro.results"], KINDS["audio.length"]
    for date in ("2024-3-26", " 2024-03-26 "):
        with pytest.raises(InvalidArgs):
            euro.check({"date": date})
    assert euro.check({"date": "26-03-2024"}) == {"date": "2024-03-26"}
    assert audio.check({"url": "HTTP://a.example/b.wav"}) == {"url": "HTTP://a.example/b.wav"}
