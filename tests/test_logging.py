"""Log redaction: no citizen id or secret reaches a log line, whatever a call site passes."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.logging import redact

_ID = re.compile(r"(?<![0-9])[0-9]{12}(?![0-9])")


_SENSITIVE = {"payload", "body", "response", "token", "authorization", "password", "key"}
_SENSITIVE.add("citizen_id")


def _reference(event: Any) -> Any:
    """The rule, written the slow obvious way: the oracle for the fast processor."""
    if isinstance(event, str):
        return _ID.sub("[redacted-id]", event)
    if isinstance(event, list | tuple):
        return [_reference(v) for v in event]
    if not isinstance(event, dict):
        return event
    out: dict[Any, Any] = {}
    for k, v in event.items():
        out[_reference(k)] = "[redacted]" if k in _SENSITIVE else _reference(v)
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


def test_ids_and_sensitive_keys_inside_lists_and_mappings_are_masked_too() -> None:
    event = {
        "event": "x",
        "errors": [{"pointer": "/079123456789", "message": "bad"}, "for 001122334455"],
        "ctx": {"token": "s3cret", "079123456789": ("a", "id 079123456789")},
    }
    assert redact(None, "info", dict(event)) == {
        "event": "x",
        "errors": [{"pointer": "/[redacted-id]", "message": "bad"}, "for [redacted-id]"],
        "ctx": {"token": "[redacted]", "[redacted-id]": ["a", "id [redacted-id]"]},
    }


def test_runs_of_other_lengths_and_runs_split_across_values_are_not_masked() -> None:
    event = {"a": "uuid 0193a3c0-1234-7abc-8def-0123456789ab", "b": "12345678901", "c": "1" * 13}
    event.update(d="123456", e="789012")  # 12 digits only if the values were glued together
    assert redact(None, "info", dict(event)) == event


_values = st.recursive(
    st.one_of(st.text(alphabet="0123456789 -ab", max_size=40), st.integers(), st.none()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["token", "id", "079123456789", "n"]), inner, max_size=3),
    ),
    max_leaves=8,
)


@given(st.dictionaries(st.sampled_from(["event", "reason", "body", "key", "x", "y"]), _values))
def test_redact_agrees_with_the_obvious_rule(event: dict[str, Any]) -> None:
    assert redact(None, "info", dict(event)) == _reference(event)


_LOG_AN_EXCEPTION = """
import structlog
from gateway.logging import configure

configure("info")
try:
    raise ValueError("no record for citizen 079203004711")
except ValueError:
    structlog.get_logger().exception("http.internal_error", path="/v1/x")
"""


def test_an_exception_logged_with_its_traceback_is_redacted_too() -> None:
    """log.exception renders the traceback into the line after the redaction had run, so an
    exception message quoting a citizen id (a provider library's error, a KeyError on a
    record) reached the log in clear."""
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-c", _LOG_AN_EXCEPTION], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert "http.internal_error" in r.stderr and "ValueError" in r.stderr
    assert "079203004711" not in r.stderr
