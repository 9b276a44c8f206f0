"""Connector plugins: found through the ``gateway.connectors`` entry-point group.

Fail closed: a service naming a connector nobody installed, or settings the connector refuses,
stops start-up with the file and field named, so a typo never routes an exchange nowhere.
The same holds for a plugin that is broken, which is third-party code: only the entry points a
service names are imported (an unused plugin that fails to import stops nothing), and whatever
goes wrong importing or building one (an import error, a factory's KeyError, a name two
distributions register, an object whose methods are not async) is a ConfigError naming the
service's field, never a traceback that names nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
from collections.abc import AsyncIterator, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import structlog

from gateway.connector import Connector, ConnectorContext, ConnectorFactory, SettingsError
from gateway.errors import ConfigError

log = structlog.get_logger("gateway.plugins")

GROUP = "gateway.connectors"
_METHODS = ("start", "deliver", "ready", "close")


def installed() -> dict[str, list[EntryPoint]]:
    """Every connector entry point by name, not loaded; a name may come from several."""
    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=GROUP):
        same = found.setdefault(ep.name, [])
        if all(other.value != ep.value for other in same):  # one package seen twice is one
            same.append(ep)
    return found


def available() -> dict[str, ConnectorFactory]:
    """Every installed connector factory by name, loaded (raises what a broken one raises);
    a name registered by several packages is left out, as :func:`build` refuses it."""
    return {name: eps[0].load() for name, eps in installed().items() if len(eps) == 1}


def _load(
    kind: str, table: Mapping[str, list[EntryPoint]], source: str, field: str
) -> ConnectorFactory | None:
    """The factory ``table`` (:func:`installed`) registers as ``kind``, None if none does."""
    eps = table.get(kind)
    if not eps:
        return None
    if len(eps) > 1:
        targets = ", ".join(sorted(_origin(ep) for ep in eps))
        raise ConfigError(
            source,
            field,
            f"connector {kind!r} is registered by more than one package ({targets}): "
            "uninstall all but one, so no package can take over another's name",
        )
    try:
        factory: ConnectorFactory = eps[0].load()
    except Exception as e:
        raise ConfigError(
            source, field, f"connector {kind!r} ({_origin(eps[0])}) cannot be loaded: {_why(e)}"
        ) from None
    return factory


def _origin(ep: EntryPoint) -> str:
    dist = ep.dist.name if ep.dist is not None else "?"
    return f"{ep.value} from {dist}"


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def build(
    kind: str,
    settings: Mapping[str, Any],
    context: ConnectorContext,
    *,
    source: str,
    field: str,
    factories: Mapping[str, ConnectorFactory] | None = None,
) -> Connector:
    """Instantiate one connector or raise ConfigError naming ``source`` and ``field``.

    ``factories`` replaces the installed entry points (tests); without it only ``kind``'s
    entry point is imported."""
    if factories is None:
        table = installed()  # one scan of the entry points serves the lookup and the message
        factory, names = _load(kind, table, source, field), sorted(table)
    else:
        factory, names = factories.get(kind), sorted(factories)
    if factory is None:
        listed = ", ".join(names) or "none installed"
        raise ConfigError(source, field, f"unknown connector {kind!r} (installed: {listed})")
    try:  # a copy: the Deployment's table is built from again in each worker after the fork
        connector = factory(copy.deepcopy(dict(settings)), context)
    except SettingsError as e:
        raise ConfigError(source, field + "_settings", str(e)) from None
    except Exception as e:  # a plugin's bug: name the service rather than print a traceback
        raise ConfigError(source, field, f"connector {kind!r} failed to build: {_why(e)}") from None
    _check_api(connector, kind, source, field)
    return connector


def _check_api(connector: object, kind: str, source: str, field: str) -> None:
    """Each of the four methods present and async. The Protocol's isinstance sees names only
    (and not which is missing); every method is awaited, so a plain function would fail at
    start-up, on each exchange or on each probe instead of here."""
    for name in _METHODS:
        method = getattr(connector, name, None)
        if method is None:
            problem = f"has no {name}() method"
        # Through functools.wraps decorators too: a sync wrapper returning the coroutine works.
        elif not inspect.iscoroutinefunction(inspect.unwrap(method)):
            problem = f"{name}() is not an async method"
        else:
            continue
        raise ConfigError(
            source, field, f"connector {kind!r} does not implement the API: {problem}"
        )


CLOSE_SECONDS = 5.0
"""How long one connector's close() may take at shutdown. The connectors close first, then the
audit log and the state store: a plugin whose close hangs would hold all of them for ever."""


@contextlib.asynccontextmanager
async def started(connectors: Mapping[str, Connector], *, source: str) -> AsyncIterator[None]:
    """Start the connectors in turn (``connectors`` in the config's service order); close the
    ones that started, the last first, each within :data:`CLOSE_SECONDS`.

    A start that fails is a ConfigError naming the service (``services[i].connector``, or
    ``..._settings`` for a SettingsError); a close that fails or hangs is logged and skipped,
    so the resources opened before the connectors still close."""
    async with contextlib.AsyncExitStack() as stack:
        for i, (sid, c) in enumerate(connectors.items()):
            field = f"services[{i}].connector"
            try:
                await c.start()
            except SettingsError as e:
                raise ConfigError(source, field + "_settings", str(e)) from None
            except Exception as e:
                raise ConfigError(source, field, f"{sid}: failed to start: {_why(e)}") from None
            stack.push_async_callback(_close, sid, c)
        yield


async def _close(service: str, connector: Connector) -> None:
    try:
        async with asyncio.timeout(CLOSE_SECONDS):
            await connector.close()
    except TimeoutError:
        log.warning("connector.close_timed_out", service=service, seconds=CLOSE_SECONDS)
    except Exception as e:
        log.warning("connector.close_failed", service=service, error=_why(e))
