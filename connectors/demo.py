"""Demo provider: answers the three demo services in-process, so ``gateway init`` runs end to end.

Why deterministic: operators and testers replay the same example and must see the same answer,
and receipts of a replayed exchange must match. Every answer is derived from the request (and the
exchange id, whose UUIDv7 timestamp stands in for the provider's clock), never from randomness.
No I/O: nothing here touches the network or the disk.

Citizen lookup follows the structure of the 12-digit personal identification number (3 digits
province code, 1 digit century and gender, 2 digits year of birth, 6 digits serial), so the record
is plausible: the gender and year of birth agree with the id. An id is "not found" when:

* its century digit (the 4th) is not 0-3 (births 1900-2099), or
* the year of birth it encodes is before 1920 or after 2024, or
* its last four digits are ``0000``.

For example ``079203001234`` (Ho Chi Minh City, male, born 2003) is found, ``079203000000`` is not.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.connector import (
    ConnectorContext,
    DeliveryFailed,
    DeliveryResult,
    OutboundMessage,
    SettingsError,
)

__all__ = ["DemoConnector"]

_FAMILY = (
    "Nguyễn", "Nguyễn", "Nguyễn", "Trần", "Trần", "Lê", "Lê", "Phạm", "Huỳnh", "Võ", "Phan",
    "Trương", "Đặng", "Bùi", "Đỗ", "Hồ", "Ngô", "Dương", "Lý", "Đinh",
)  # fmt: skip
_MIDDLE = {
    "male": ("Văn", "Hữu", "Đức", "Minh", "Quốc", "Thành", "Hoàng", "Gia"),
    "female": ("Thị", "Ngọc", "Thu", "Thanh", "Mỹ", "Kim", "Bích", "Phương"),
}
_GIVEN = {
    "male": (
        "Anh", "Bảo", "Dũng", "Hùng", "Khoa", "Long", "Nam", "Phúc", "Quân", "Sơn", "Tài",
        "Thắng", "Trung", "Tuấn", "Việt", "Khang", "Huy", "Đạt",
    ),
    "female": (
        "Anh", "Châu", "Hà", "Hạnh", "Hương", "Lan", "Linh", "Mai", "My", "Ngân", "Nhung",
        "Phương", "Thảo", "Trang", "Vy", "Yến", "Trâm", "Hằng",
    ),
}  # fmt: skip
_ETHNICITY = ("Kinh",) * 17 + ("Hoa", "Hoa", "Khmer", "Chăm")
# (district, wards, streets): Ho Chi Minh City before the 2025 two-tier reform.
_PLACES = (
    ("Quận 1", ("Phường Bến Nghé", "Phường Bến Thành", "Phường Đa Kao", "Phường Tân Định"),
     ("Lê Lợi", "Nguyễn Huệ", "Hai Bà Trưng", "Pasteur", "Lý Tự Trọng")),
    ("Quận 3", ("Phường Võ Thị Sáu", "Phường 4", "Phường 9", "Phường 12"),
     ("Cách Mạng Tháng Tám", "Nam Kỳ Khởi Nghĩa", "Võ Văn Tần", "Trần Quốc Thảo")),
    ("Quận 5", ("Phường 1", "Phường 5", "Phường 11", "Phường 14"),
     ("Trần Hưng Đạo", "Nguyễn Trãi", "An Dương Vương", "Hùng Vương")),
    ("Quận Bình Thạnh", ("Phường 1", "Phường 15", "Phường 22", "Phường 25"),
     ("Điện Biên Phủ", "Xô Viết Nghệ Tĩnh", "Nguyễn Xí", "Bạch Đằng")),
    ("Quận Gò Vấp", ("Phường 1", "Phường 5", "Phường 10", "Phường 17"),
     ("Quang Trung", "Phan Văn Trị", "Nguyễn Oanh", "Lê Đức Thọ")),
    ("Quận Tân Bình", ("Phường 2", "Phường 4", "Phường 12", "Phường 15"),
     ("Cộng Hòa", "Hoàng Văn Thụ", "Trường Chinh", "Lạc Long Quân")),
    ("Thành phố Thủ Đức", ("Phường Thảo Điền", "Phường An Phú", "Phường Linh Trung",
                            "Phường Hiệp Bình Chánh"),
     ("Võ Văn Ngân", "Kha Vạn Cân", "Xa Lộ Hà Nội", "Song Hành")),
    ("Huyện Bình Chánh", ("Xã Vĩnh Lộc A", "Xã Bình Hưng", "Thị trấn Tân Túc"),
     ("Quốc lộ 1A", "Nguyễn Cửu Phú", "Vĩnh Lộc")),
)  # fmt: skip
_PROVINCE = "Thành phố Hồ Chí Minh"
_ALL_FIELDS = (
    "full_name", "date_of_birth", "gender", "ethnicity", "nationality",
    "permanent_address", "current_address",
)  # fmt: skip


class _Seed:
    """Deterministic choices from a SHA-256 stream, so the same input always gives the same data."""

    def __init__(self, *parts: str) -> None:
        self._digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
        self._pos = 0

    def number(self, bound: int) -> int:
        if self._pos + 2 > len(self._digest):
            self._digest, self._pos = hashlib.sha256(self._digest).digest(), 0
        value = int.from_bytes(self._digest[self._pos : self._pos + 2], "big")
        self._pos += 2
        return value % bound

    def pick(self, options: tuple[Any, ...]) -> Any:
        return options[self.number(len(options))]


def _when(exchange_id: str, clock: Callable[[], datetime]) -> str:
    """The provider's timestamp: the exchange id's UUIDv7 time, so replays answer identically."""
    try:
        parsed = uuid.UUID(exchange_id)
    except ValueError:
        parsed = None
    if parsed is not None and parsed.version == 7:
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=parsed.int >> 80)
    else:
        moment = clock()
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _reference(prefix: str, exchange_id: str) -> str:
    """A provider-side id derived from the exchange id: stable across replays of one exchange."""
    return f"{prefix}-{hashlib.sha256(exchange_id.encode()).hexdigest()[:12].upper()}"


def _birth(citizen_id: str) -> tuple[str, int] | None:
    """Gender and year of birth encoded in the id, or None when the id cannot be a living person."""
    century_digit = int(citizen_id[3])
    if century_digit > 3 or citizen_id.endswith("0000"):
        return None
    year = 1900 + 100 * (century_digit // 2) + int(citizen_id[4:6])
    if not 1920 <= year <= 2024:
        return None
    return ("male" if century_digit % 2 == 0 else "female"), year


def _address(seed: _Seed) -> dict[str, str]:
    district, wards, streets = seed.pick(_PLACES)
    house = f"{seed.number(250) + 1}" + (f"/{seed.number(40) + 1}" if seed.number(3) == 0 else "")
    return {
        "street_address": f"{house} {seed.pick(streets)}",
        "ward": seed.pick(wards),
        "district": district,
        "province": _PROVINCE,
    }


def _citizen_record(citizen_id: str, gender: str, year: int) -> dict[str, Any]:
    seed = _Seed("citizen", citizen_id)
    name = f"{seed.pick(_FAMILY)} {seed.pick(_MIDDLE[gender])} {seed.pick(_GIVEN[gender])}"
    month = seed.number(12) + 1
    day = seed.number(28) + 1
    permanent = _address(seed)
    current = permanent if seed.number(3) else _address(seed)
    return {
        "full_name": name,
        "date_of_birth": f"{year:04d}-{month:02d}-{day:02d}",
        "gender": gender,
        "ethnicity": seed.pick(_ETHNICITY),
        "nationality": "VN",
        "permanent_address": permanent,
        "current_address": dict(current),
    }


def _citizen_lookup(message: OutboundMessage, now: str) -> dict[str, Any]:
    citizen_id = message.payload["citizen_id"]
    birth = _birth(citizen_id)
    if birth is None:
        return {"citizen_id": citizen_id, "status": "not-found", "checked_at": now}
    record = _citizen_record(citizen_id, *birth)
    wanted = set(message.payload.get("requested_fields") or _ALL_FIELDS) | {"full_name"}
    answer = {"citizen_id": citizen_id, "status": "found", "checked_at": now}
    answer.update({k: v for k, v in record.items() if k in wanted})
    return answer


def _pilot_report(message: OutboundMessage, now: str) -> dict[str, Any]:
    models = message.payload["models"]
    return {
        "report_id": _reference("BC", message.exchange_id),
        "received_at": now,
        "status": "received",
        "message": f"Đã tiếp nhận báo cáo {len(models)} mô hình.",
    }


def _budget_proposal(message: OutboundMessage, now: str) -> dict[str, Any]:
    payload = message.payload
    answer: dict[str, Any] = {
        "proposal_id": _reference(f"DT{int(payload['fiscal_year'])}", message.exchange_id),
        "status": "received",
        "received_at": now,
    }
    items_sum = sum(item["amount_vnd"] for item in payload["line_items"])
    if items_sum != payload["total_vnd"]:
        answer["status"] = "returned"
        answer["reasons"] = [f"total_vnd differs from the sum of line items ({items_sum} VND)"]
    return answer


_HANDLERS: dict[str, Callable[[OutboundMessage, str], dict[str, Any]]] = {
    "citizen-lookup": _citizen_lookup,
    "pilot-progress-report": _pilot_report,
    "budget-proposal": _budget_proposal,
}


class DemoConnector:
    """In-process provider for the demo services; ``settings = {"service": "citizen-lookup"}``.

    Without a ``service`` setting the behaviour follows ``context.service`` (its major version
    suffix, such as ``.v1``, is ignored). An unknown service or setting is a ``SettingsError`` at
    construction, so a misconfigured gateway refuses to start. ``clock`` is only used when an
    exchange id is not a UUIDv7.
    """

    def __init__(
        self,
        settings: Mapping[str, Any],
        context: ConnectorContext,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        unknown = sorted(set(settings) - {"service"})
        if unknown:
            raise SettingsError(f"demo connector: unknown setting {unknown[0]!r}")
        service = settings.get("service", context.service)
        if not isinstance(service, str):
            raise SettingsError("demo connector: 'service' must be a string")
        name = re.sub(r"\.v[0-9]+$", "", service)
        if name not in _HANDLERS:
            known = ", ".join(sorted(_HANDLERS))
            raise SettingsError(f"demo connector: unknown service {service!r} (known: {known})")
        self._handler = _HANDLERS[name]
        self._clock = clock
        self._started = False

    async def start(self) -> None:
        self._started = True

    async def deliver(self, message: OutboundMessage) -> DeliveryResult:
        """Answer ``message`` as the provider would; a malformed request is a ``DeliveryFailed``.

        The pipeline validates requests first, so a failure here means the demo was wired to the
        wrong service; the message names no payload value.
        """
        try:
            answer = self._handler(message, _when(message.exchange_id, self._clock))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            raise DeliveryFailed("demo provider: the request does not fit the service") from None
        return DeliveryResult(response=answer, status=200, metadata={"provider": "demo"})

    async def ready(self) -> bool:
        return self._started

    async def close(self) -> None:
        self._started = False
