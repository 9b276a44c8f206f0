"""Log redaction: no citizen id or secret reaches a log line, whatever a call site passes."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.logging import redact

_ID = re.compile(r"(?<![0-9])[0-9]{12}(?![0-9])")


def _reference(event: dict[str, Any]) -> dict[str, Any]:
    """The rule, written the slow obvious way: the oracle for the fast processor."""
    sensitive = {"payload", "body", "response", "token", "authorization", "password", "key"}
    sensitive.add("citizen_id")
    out: dict[str, Any] = {}
    for k, v in event.items():
        if k in sensitive:
            out[k] = "[redacted]"
        elif isinstance(v, str):
            out[k] = _ID.sub("[redacted-id]", v)
        else:
            out[k] = v
    return out


def test_sensitive_keys_are_dropped_and_id_shaped_numbers_masked_in_every_string() -> None:
    event = {
        "event": "exchange.rejected",
        "reason": "no record for 079123456789 in the registry",
        "payload": {"citizen_id": "079123456789"},
        "token": "s3cret",
        "note": "ids 001122334455,079123456789",
        "count": 123456789012,  # not a string: left alone (never logged as such by the gateway)
    }
    out = redact(None, "info", dict(event))
    assert out["payload"] == "[redacted]" and out["token"] == "[redacted]"
    assert out["reason"] == "no record for [redacted-id] in the registry"
    assert out["note"] == "ids [redacted-id],[redacted-id]"
    assert out["count"] == 123456789012


def test_runs_of_other_lengths_and_runs_split_across_values_are_not_masked() -> None:
    event = {"a": "uuid 0193a3c0-1234-7abc-8def-0123456789ab", "b": "12345678901", "c": "1" * 13}
    event.update(d="123456", e="789012")  # 12 digits only if the values were glued together
    assert redact(None, "info", dict(event)) == event


_values = st.one_of(
    st.text(alphabet="0123456789 -ab", max_size=40),
    st.integers(),
    st.none(),
    st.lists(st.text(alphabet="0123456789", max_size=14), max_size=2),
)


@given(st.dictionaries(st.sampled_from(["event", "reason", "body", "key", "x", "y"]), _values))
def test_redact_agrees_with_the_obvious_rule(event: dict[str, Any]) -> None:
    assert redact(None, "info", dict(event)) == _reference(event)
