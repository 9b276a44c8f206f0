"""Generated bad input against a real `gateway serve`: never a 5xx, always audited.

The rejection tests in test_exchange.py pin one cause each; these throw what nobody thought of
(hypothesis-generated bodies, payloads, tampered signed requests, odd headers and service names)
at one real server process, and check for every request what CONTRACT.md promises for bad input:
a 2xx or a 4xx, never a 5xx; every 4xx an RFC 9457 problem naming its exchange; and every
attempt in the audit log before the answer left (a rejection as one record with its status, a
delivery as two). At the end the server's log must hold no traceback and no error line.

The server runs the `gateway init` deployment (demo connector, SQLite log) as a process of its
own, so what is checked is the command an operator runs, not an app object.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import example as case
from hypothesis import strategies as st

from gateway.config import load
from gateway.crypto import jws
from gateway.crypto.keys import load_certificates, load_private_key
from gateway.devinit import init_deployment
from gateway.models import rfc3339
from gateway.verify import describe_verification
from tests.support import ServerProcess, audit_records, example, signed_request

SERVICES = ("citizen-lookup.v1", "pilot-progress-report.v1", "budget-proposal.v1")
SIGNER = "hcm.quan-1"  # allowed on all three services, signing its requests
BEARER = "hcm.thu-duc"  # allowed on all three services, with its development token
EXAMPLES = 120  # per test: each is one real HTTP request (and a signature for signed ones)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Served:
    server: ServerProcess
    dir: Path

    def token(self, participant: str) -> str:
        return (self.dir / "participants" / participant / "token").read_text().strip()

    def audit(self) -> list[dict[str, Any]]:
        return audit_records(self.dir)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    target = tmp_path_factory.mktemp("fuzz") / "dep"
    init_deployment(target)
    cfg = target / "gateway.toml"
    # Hundreds of requests from two senders: lift the per-sender rate limit (429 is tested
    # elsewhere) so that every request reaches the stage the fuzzing aims at.
    text = cfg.read_text()
    assert "[limits]\n" in text
    cfg.write_text(text.replace("[limits]\n", "[limits]\nrate_per_second = 100000\n", 1))
    server = ServerProcess(cfg, stdout_to_file=True)
    try:
        yield Served(server, target)
    finally:
        log = server.stop()
    assert "Traceback" not in log, log[-3000:]
    lines = log.split("\n")  # not splitlines(): U+2028 or U+0085 may stand unescaped in JSON
    unreadable = [x for x in lines if x.startswith("{") and not _json_object(x)]
    assert not unreadable, unreadable[:3]
    bad = [x for x in lines if _json_object(x).get("level") in ("error", "critical")]
    assert not bad, bad[:3]


def _json_object(line: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


Answer = tuple[int, dict[str, str], bytes]


def call(
    served: Served,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One request on a fresh connection (http.client sends the bytes and headers as given)."""
    conn = http.client.HTTPConnection("127.0.0.1", served.server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def post(served: Served, service: str, body: bytes, headers: dict[str, str]) -> Answer:
    return call(
        served, "POST", "/v1/exchange/" + urllib.parse.quote(service, safe=""), body, headers
    )


def check_answer(
    served: Served, before: int, status: int, headers: dict[str, str], raw: bytes
) -> int:
    """What every answer to bad (or odd) input must be; returns the status."""
    assert status < 500, (status, raw[:500])
    doc = orjson.loads(raw)
    records = served.audit()
    if status >= 400:
        assert headers["content-type"].startswith("application/problem+json"), headers
        assert doc["status"] == status and doc["type"] and doc["title"] and doc["detail"], doc
        assert len(records) == before + 1, "a rejection must add exactly one audit record"
        last = records[-1]
        assert last["event"] == "exchange.rejected" and last["status"] == status, last
        assert last["exchange_id"] == doc["exchange_id"] == headers["x-exchange-id"]
    else:
        assert status == 200 and doc["status"] == "delivered", doc
        assert len(records) == before + 2, "a delivery must add its accepted and outcome records"
        assert [r["event"] for r in records[-2:]] == ["exchange.accepted", "exchange.delivered"]
        assert records[-1]["exchange_id"] == doc["exchange_id"]
    return status


# ------------------------------------------------------------------------------ strategies
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/jose+json",
        "text/plain",
        "application/json; charset=utf-8",
        "",
    ]
) | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)


@st.composite
def mutated_example(draw: st.DrawFn, service: str) -> Any:
    """A service's valid example with one member replaced, removed or added."""
    doc = example(service)
    keys = sorted(doc)
    how = draw(st.sampled_from(["replace", "remove", "add", "whole"]))
    if how == "whole":
        return draw(json_value)
    if how == "add":
        doc[draw(st.text(max_size=12))] = draw(json_value)
    elif how == "remove":
        doc.pop(draw(st.sampled_from(keys)))
    else:
        doc[draw(st.sampled_from(keys))] = draw(json_value)
    return doc


def _count(served: Served) -> int:
    return len(served.audit())


# ------------------------------------------------------------------------------ tests
@FUZZ
@given(body=st.binary(max_size=600), ctype=content_types, service=st.sampled_from(SERVICES))
def test_arbitrary_bytes_are_refused_with_a_problem_and_audited(
    served: Served, body: bytes, ctype: str, service: str
) -> None:
    before = _count(served)
    status, headers, raw = post(
        served,
        service,
        body,
        {"Content-Type": ctype, "Authorization": f"Bearer {served.token(BEARER)}"},
    )
    assert check_answer(served, before, status, headers, raw) >= 400


@FUZZ
@given(data=st.data(), service=st.sampled_from(SERVICES), signed=st.booleans())
def test_any_payload_from_an_allowed_sender_is_delivered_or_refused_never_a_5xx(
    served: Served, data: st.DataObject, service: str, signed: bool
) -> None:
    """Schema validation, canonicalization and the demo provider meet payloads nobody wrote."""
    payload = data.draw(mutated_example(service))
    before = _count(served)
    if signed:
        body = signed_any(served, service, payload)
        headers = {"Content-Type": "application/jose+json"}
    else:
        body = json.dumps(payload).encode()  # stdlib: integers of any size, as a client may send
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {served.token(BEARER)}",
        }
    check_answer(served, before, *post(served, service, body, headers))


def signed_any(served: Served, service: str, payload: Any) -> bytes:
    """A signed request carrying ``payload``; signed over plain JSON where RFC 8785 refuses it
    (integers beyond I-JSON), as a careless client would."""
    try:
        return signed_request(served.dir, SIGNER, service, payload)
    except ValueError:
        pass
    d = served.dir / "participants" / SIGNER
    key = load_private_key((d / "key.pem").read_bytes())
    chain = load_certificates((d / "cert.pem").read_bytes())
    req = {
        "id": str(uuid.uuid4()),
        "sender": SIGNER,
        "service": service,
        "created": rfc3339(datetime.now(UTC)),
        "payload": payload,
    }
    return jws.serialize(jws.sign_bytes(json.dumps(req).encode(), key, chain, typ="request+jws"))


def _b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@st.composite
def tampered_jws(draw: st.DrawFn, served: Served, service: str) -> bytes:
    """A correctly signed request, then changed in one place after signing."""
    token = orjson.loads(signed_request(served.dir, SIGNER, service, example(service)))
    member = draw(st.sampled_from(["protected", "payload", "signature", "other"]))
    how = draw(st.sampled_from(["flip", "replace", "remove", "json"]))
    if member == "other":
        token[draw(st.text(max_size=10))] = draw(json_value)
    elif how == "remove":
        del token[member]
    elif how == "json":
        token[member] = draw(json_value)
    elif how == "replace":
        token[member] = _b64u(draw(st.binary(max_size=300)))
    else:
        text = token[member]
        i = draw(st.integers(min_value=0, max_value=len(text) - 1))
        token[member] = text[:i] + draw(st.characters(max_codepoint=0x7F)) + text[i + 1 :]
    return json.dumps(token).encode()


@FUZZ
@given(data=st.data(), service=st.sampled_from(SERVICES))
def test_a_signed_request_changed_after_signing_is_never_a_5xx(
    served: Served, data: st.DataObject, service: str
) -> None:
    body = data.draw(tampered_jws(served, service))
    before = _count(served)
    status, headers, raw = post(served, service, body, {"Content-Type": "application/jose+json"})
    # A change can leave the request valid (a flipped character re-encoding the same bytes,
    # or an unknown top-level member that is ignored), so a delivery is a legitimate answer.
    check_answer(served, before, status, headers, raw)


# What HTTP allows in a field value (VCHAR, SP, HTAB, obs-text). A DEL or a control character
# makes the message itself malformed: aiohttp's parser answers that with a plain 400 before any
# exchange exists, so there is nothing to audit (README, "Errors").
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")
    | st.just("\t"),
    max_size=300,
)
# A path segment that still routes to /v1/exchange/{service}: no "/" (even percent-encoded,
# aiohttp decodes it before routing), and no dot segments (normalized away).
service_names = st.text(
    st.characters(exclude_characters="/\\", exclude_categories=["Cs"]), min_size=1, max_size=60
).filter(lambda s: s not in (".", ".."))


@FUZZ
@case(service="citizen-lookup.v1", key="\x80", request_id=None, auth="good")  # was a 503
@case(service="{x}", key=None, request_id=None, auth="good")  # was an unaudited 404
@given(
    service=st.sampled_from(SERVICES) | service_names,
    key=st.none() | header_text,
    request_id=st.none() | header_text,
    auth=st.sampled_from(["good", "none"]) | header_text,
)
def test_odd_service_names_and_headers_are_never_a_5xx(
    served: Served, service: str, key: str | None, request_id: str | None, auth: str
) -> None:
    headers = {"Content-Type": "application/json"}
    if auth == "good":
        headers["Authorization"] = f"Bearer {served.token(BEARER)}"
    elif auth != "none":
        headers["Authorization"] = auth
    if key is not None:  # a fresh prefix: two examples never share a key by accident
        headers["Idempotency-Key"] = f"{uuid.uuid4()}{key}"
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    body = orjson.dumps(example(service) if service in SERVICES else {"x": 1})
    before = _count(served)
    check_answer(served, before, *post(served, service, body, headers))


# ------------------------------------------------------------------ the other public inputs
@dataclass
class Artifacts:
    receipt: bytes
    checkpoint: bytes
    bundle: bytes


def get(served: Served, path: str, token: str | None) -> Answer:
    return call(served, "GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})


def role(served: Served, name: str) -> str:
    return (served.dir / "roles" / f"dtc-{name}.token").read_text().strip()


@pytest.fixture(scope="module")
def artifacts(served: Served) -> Artifacts:
    """A real receipt, checkpoint and inclusion proof bundle, for /v1/verify to be fed altered."""
    service = "citizen-lookup.v1"
    body = signed_request(served.dir, SIGNER, service, example(service))
    status, _, raw = post(served, service, body, {"Content-Type": "application/jose+json"})
    assert status == 200, raw
    doc = orjson.loads(raw)
    # An admin publishes a checkpoint now, so that it covers the exchange (proof below).
    admin = {"Authorization": f"Bearer {role(served, 'admin')}"}
    status, _, answer = call(served, "POST", "/v1/audit/checkpoint", headers=admin)
    assert status in (200, 201), answer
    status, _, note = get(served, "/v1/audit/checkpoint", None)
    assert status == 200, note
    path = f"/v1/exchanges/{doc['exchange_id']}/proof"
    status, _, bundle = get(served, path, role(served, "operator"))
    assert status == 200, bundle
    return Artifacts(orjson.dumps(doc["receipt"]), note, bundle)


def check_problem_or_ok(status: int, headers: dict[str, str], raw: bytes) -> Any:
    assert status < 500, (status, raw[:500])
    if status >= 400:
        assert headers["content-type"].startswith("application/problem+json"), headers
        doc = orjson.loads(raw)
        assert doc["status"] == status and doc["title"] and doc["detail"], doc
        return doc
    return raw


@st.composite
def altered(draw: st.DrawFn, text: bytes) -> bytes:
    """An artifact with one byte replaced, a slice cut out, or bytes inserted."""
    i = draw(st.integers(min_value=0, max_value=len(text) - 1))
    how = draw(st.sampled_from(["replace", "cut", "insert"]))
    if how == "replace":
        return text[:i] + bytes([draw(st.integers(0, 255))]) + text[i + 1 :]
    if how == "cut":
        return text[:i] + text[i + draw(st.integers(1, 40)) :]
    return text[:i] + draw(st.binary(min_size=1, max_size=20)) + text[i:]


@FUZZ
@given(data=st.data(), kind=st.sampled_from(["receipt", "checkpoint", "bundle", "bytes"]))
def test_verify_answers_any_artifact_with_a_report_or_a_400_never_a_5xx(
    served: Served, artifacts: Artifacts, data: st.DataObject, kind: str
) -> None:
    """POST /v1/verify is public: altered receipts, notes and proof bundles, and plain bytes."""
    if kind == "bytes":
        body = data.draw(st.binary(max_size=600))
    else:
        body = data.draw(altered(getattr(artifacts, kind)))
    status, headers, raw = call(served, "POST", "/v1/verify", body)
    check_problem_or_ok(status, headers, raw)
    if status == 200:
        report = orjson.loads(raw)
        # An alteration may leave what is signed intact (whitespace in the JSON, a member
        # the format does not sign), so "valid" can be either; the report must be whole.
        assert isinstance(report["valid"], bool) and report["checks"], report


AUDIT_PARAMS = (
    "limit", "since", "until", "sender", "service", "provider", "outcome", "exchange_id",
    "cursor", "index", "tree_size", "first", "second", "from", "x",
)  # fmt: skip
query_values = st.text(max_size=40) | st.integers(min_value=-(2**70), max_value=2**70).map(str)


@FUZZ
@given(
    path=st.sampled_from(
        [
            "/v1/audit/records",
            "/v1/audit/proof/inclusion",
            "/v1/audit/proof/consistency",
            "/v1/audit/checkpoint",
        ]
    ),
    params=st.dictionaries(st.sampled_from(AUDIT_PARAMS), query_values, max_size=4),
    segment=st.none() | st.text(min_size=1, max_size=60),
    who=st.sampled_from(["operator", "auditor", "admin", "nobody"]),
)
def test_audit_queries_with_any_parameters_are_never_a_5xx(
    served: Served, path: str, params: dict[str, str], segment: str | None, who: str
) -> None:
    """The operators' read API: any parameters, any record index or exchange id in the path."""
    if segment is not None:  # /v1/audit/records/{index}, /v1/exchanges/{id}[/proof]
        quoted = urllib.parse.quote(segment, safe="")
        path = {
            "/v1/audit/records": f"/v1/audit/records/{quoted}",
            "/v1/audit/proof/inclusion": f"/v1/exchanges/{quoted}",
            "/v1/audit/proof/consistency": f"/v1/exchanges/{quoted}/proof",
        }.get(path, path)
    query = urllib.parse.urlencode(params)
    token = None if who == "nobody" else role(served, who)
    check_problem_or_ok(*get(served, f"{path}?{query}" if query else path, token))


@FUZZ
@given(data=st.data(), old=st.integers(min_value=-5, max_value=2**65), raw=st.booleans())
def test_witness_add_checkpoint_answers_any_submission_without_a_5xx(
    served: Served, artifacts: Artifacts, data: st.DataObject, old: int, raw: bool
) -> None:
    """POST /v1/witness/add-checkpoint is public (the note signature is the authentication):
    plain bytes, or a tlog-witness submission around this gateway's own checkpoint, altered."""
    if raw:
        body = data.draw(st.binary(max_size=600))
    else:
        proof = data.draw(st.lists(st.binary(min_size=0, max_size=48), max_size=3))
        lines = b"".join(base64.b64encode(p) + b"\n" for p in proof)
        note = data.draw(st.just(artifacts.checkpoint) | altered(artifacts.checkpoint))
        body = b"old %d\n" % old + lines + b"\n" + note
    status, headers, answer = call(served, "POST", "/v1/witness/add-checkpoint", body)
    if status == 409 and headers["content-type"].startswith("text/x.tlog.size"):
        assert answer.rstrip(b"\n").isdigit(), answer  # the spec's stale-size answer
        return
    check_problem_or_ok(status, headers, answer)


@FUZZ
@given(
    data=st.data(),
    kind=st.sampled_from(["receipt", "bundle", "bytes"]),
    request=st.none() | st.binary(max_size=300) | json_value.map(lambda v: json.dumps(v).encode()),
)
def test_gateway_verify_reports_on_any_file_and_request_without_raising(
    served: Served, artifacts: Artifacts, data: st.DataObject, kind: str, request: bytes | None
) -> None:
    """`gateway verify FILE [--request R]` offline: what it prints for whatever it is given,
    including a request payload to bind (the one input POST /v1/verify does not take)."""
    dep = load(served.dir / "gateway.toml")
    if kind == "bytes":
        raw = data.draw(st.binary(max_size=600))
    else:
        raw = data.draw(st.just(getattr(artifacts, kind)) | altered(getattr(artifacts, kind)))
    ok, lines = describe_verification(
        raw,
        dep.trust_anchor_pems,
        now=datetime.now(UTC),
        payloads={} if request is None else {"request": request},
        gateway_id=dep.config.gateway.id,
        origin=dep.config.audit.origin,
    )
    assert isinstance(ok, bool) and lines and all(isinstance(x, str) for x in lines)
    if raw == artifacts.receipt and request is not None:
        assert not ok, lines  # a payload that is not the one the receipt binds
