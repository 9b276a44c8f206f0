"""Per-call cost of strict parsing and JCS canonicalization against their baselines, same process.

Why: both run on every exchange (parse the request body; canonicalize it, and later the
response, for the signatures), so their cost per ~2 KiB body is a floor on request latency. Each
implementation is compared with the reference it must agree with (``json.loads`` with strict
hooks, ``rfc8785.dumps``) and with raw ``orjson``, the lower bound.

The payload is a government-style record: ids, Vietnamese names and addresses with diacritics,
arrays of objects, ISO dates; about 2 KiB as compact JSON. ``--floats`` adds a few floats
(coordinates, a fee), which take the slower per-float route in canonicalization.

    .venv/bin/python bench/bench_canonical.py [--calls 20000] [--repeat 5] [--floats]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import orjson
import rfc8785

from gateway import strictjson
from gateway.crypto.canonical import canonicalize


def record(with_floats: bool) -> dict[str, Any]:
    """A citizen-lookup request as a ministry system would send it (fictitious data)."""
    value: dict[str, Any] = {
        "request_id": "9f1c2e7a-4b3d-4f7e-9a51-0c2d8e6b1f33",
        "service": "dan-cu.tra-cuu-cong-dan",
        "purpose": "Xác minh thông tin công dân khi cấp hộ chiếu",
        "legal_basis": "Nghị định 13/2023/NĐ-CP, Điều 17",
        "requested_at": "2024-11-28T09:55:12+07:00",
        "requester": {"agency_code": "BCA-C06", "officer_id": 418230, "name": "Trần Thị Hương"},
        "citizen": {
            "id_number": "001089012345",
            "full_name": "Nguyễn Văn Đức Anh",
            "date_of_birth": "1989-04-17",
            "gender": "Nam",
            "nationality": "Việt Nam",
            "place_of_origin": "Xã Đông Hưng, Huyện Đông Hưng, Tỉnh Thái Bình",
            "permanent_address": {
                "street": "Số 12 ngõ 34 phố Hoàng Quốc Việt",
                "ward": "Phường Nghĩa Đô",
                "district": "Quận Cầu Giấy",
                "province": "Thành phố Hà Nội",
                "codes": {"ward": 167, "district": 5, "province": 1},
            },
            "documents": [
                {
                    "type": "CCCD",
                    "number": "001089012345",
                    "issued_on": "2021-06-01",
                    "issued_by": "Cục Cảnh sát QLHC về TTXH",
                    "valid": True,
                },
                {
                    "type": "HC",
                    "number": "C1234567",
                    "issued_on": "2019-03-15",
                    "expires_on": "2029-03-15",
                    "valid": True,
                },
                {
                    "type": "GPLX",
                    "number": "010123456789",
                    "issued_on": "2012-08-20",
                    "expires_on": None,
                    "valid": False,
                },
            ],
            "household": [
                {"relation": "Chủ hộ", "full_name": "Nguyễn Văn Bình", "year_of_birth": 1958},
                {"relation": "Vợ", "full_name": "Lê Thị Thu Hà", "year_of_birth": 1962},
                {"relation": "Con", "full_name": "Nguyễn Thị Mai Phương", "year_of_birth": 1993},
            ],
        },
        "fields": ["full_name", "date_of_birth", "permanent_address", "documents", "household"],
        "history": [
            {
                "at": "2024-01-05T08:00:00+07:00",
                "event": "Cập nhật địa chỉ thường trú",
                "by": "UBND Phường Nghĩa Đô",
                "seq": 1,
            },
            {
                "at": "2024-06-30T14:20:05+07:00",
                "event": "Cấp đổi thẻ căn cước",
                "by": "Công an Quận Cầu Giấy",
                "seq": 2,
            },
        ],
        "consent": {"given": True, "method": "VNeID", "reference": "VNEID-2024-11-28-000731"},
        "page": {"size": 50, "number": 1, "total": 3},
    }
    if with_floats:
        value["citizen"]["permanent_address"]["geo"] = {"lat": 21.046215, "lon": 105.800411}
        value["fee"] = {"amount": 200000.0, "vat_rate": 0.1}
    return value


def per_call_us(fn: Callable[[], object], calls: int, repeat: int) -> float:
    """Best of ``repeat`` runs of ``calls`` calls (the least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


def report(title: str, rows: list[tuple[str, Callable[[], object]]], calls: int, rep: int) -> None:
    """Print per-call microseconds, and each row's time relative to the first row (ours)."""
    print(title)
    timings = [(name, per_call_us(fn, calls, rep)) for name, fn in rows]
    ours = timings[0][1]
    for name, us in timings:
        print(f"  {name:36s} {us:8.2f} us/call  {us / ours:6.2f}x ours")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--floats", action="store_true")
    args = parser.parse_args()
    calls, rep = max(1, min(args.calls, 1_000_000)), max(1, min(args.repeat, 50))

    value = record(args.floats)
    body = json.dumps(value, ensure_ascii=False).encode()
    escaped = json.dumps(value).encode()  # the same body from a client using \\u escapes
    assert strictjson.loads(body) == value == strictjson._reference_loads(body, 64)
    assert canonicalize(value) == rfc8785.dumps(value)
    print(f"payload: {len(body)} bytes UTF-8, {len(escaped)} \\u-escaped; floats={args.floats}")

    report(
        "parse (UTF-8 body)",
        [
            ("strictjson.loads", lambda: strictjson.loads(body)),
            ("reference (json.loads + hooks)", lambda: strictjson._reference_loads(body, 64)),
            ("json.loads (not strict)", lambda: json.loads(body)),
            ("orjson.loads (not strict)", lambda: orjson.loads(body)),
        ],
        calls,
        rep,
    )
    report(
        "parse (\\u-escaped body)",
        [
            ("strictjson.loads", lambda: strictjson.loads(escaped)),
            ("reference (json.loads + hooks)", lambda: strictjson._reference_loads(escaped, 64)),
            ("orjson.loads (not strict)", lambda: orjson.loads(escaped)),
        ],
        calls,
        rep,
    )
    report(
        "canonicalize",
        [
            ("canonicalize", lambda: canonicalize(value)),
            ("rfc8785.dumps (reference)", lambda: rfc8785.dumps(value)),
            ("orjson.dumps OPT_SORT_KEYS (not JCS)", lambda: orjson.dumps(value, option=4)),
        ],
        calls,
        rep,
    )


if __name__ == "__main__":
    main()
