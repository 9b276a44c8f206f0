"""Connector discovery fails closed, naming the service's field, for any broken plugin.

Third-party connectors are found through the ``gateway.connectors`` entry-point group. Each
test installs a distribution the way pip would leave it (a ``*.dist-info`` directory with
``entry_points.txt``) on a temporary ``sys.path`` entry, so discovery runs exactly as it does
in production.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway import plugins
from gateway.config import load
from gateway.connector import Connector, ConnectorContext, SettingsError
from gateway.errors import ConfigError
from gateway.http.app import build_connectors
from gateway.testing import FakeConnector
from tests.support import make_deployment

CTX = ConnectorContext("citizen-lookup.v1", "central.dan-cu", ".")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh sys.path entry to install fake distributions and their modules into."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    before = set(sys.modules)
    yield root
    for name in set(sys.modules) - before:
        if name.startswith("fakeplugin_"):
            del sys.modules[name]


def install(site: Path, dist: str, entry_points: Mapping[str, str], module: str = "") -> None:
    """Install distribution ``dist`` registering ``entry_points`` (name -> "module:attr"),
    with ``module`` as the source of a module named ``fakeplugin_<dist>`` if given."""
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[gateway.connectors]\n{lines}")
    if module:
        (site / f"fakeplugin_{dist.replace('-', '_')}.py").write_text(module)


def build(kind: str, factories: Mapping[str, Any] | None = None) -> Any:
    return plugins.build(
        kind, {}, CTX, source="gw.toml", field="services[0].connector", factories=factories
    )


def test_a_plugin_that_fails_to_import_stops_only_the_service_that_names_it(site: Path) -> None:
    """Every installed plugin was imported at start-up, used or not: one whose import failed
    stopped every deployment with a bare traceback naming no service. Now only the connector
    a service names is loaded, and its failure is a ConfigError naming that service's field,
    the entry point and the cause."""
    install(site, "broken-plugin", {"broken": "fakeplugin_nowhere_to_be_found:Factory"})
    assert isinstance(build("demo"), Connector)  # the broken one is not touched
    with pytest.raises(ConfigError) as caught:
        build("broken")
    assert caught.value.field == "services[0].connector"
    assert "fakeplugin_nowhere_to_be_found:Factory" in caught.value.problem
    assert "ModuleNotFoundError" in caught.value.problem


def test_an_entry_point_shadowing_a_builtin_connector_is_refused_by_name(site: Path) -> None:
    """Two distributions registering one name (a third party's ``http``): whichever the
    metadata scan met last won, silently, so an installed package could take over every
    service using the built-in. Now a name registered twice cannot be used, and the error
    names both targets."""
    install(
        site,
        "shadow-plugin",
        {"http": "fakeplugin_shadow_plugin:Shadow"},
        module="class Shadow:\n    pass\n",
    )
    with pytest.raises(ConfigError) as caught:
        build("http")
    problem = caught.value.problem
    assert "connectors.http:HttpConnector" in problem
    assert "fakeplugin_shadow_plugin:Shadow" in problem
    assert isinstance(build("demo"), Connector)


@pytest.mark.parametrize(
    "error", [KeyError("url"), TypeError("bad operand"), ValueError("no"), OSError(2, "gone")]
)
def test_a_factory_raising_something_other_than_settings_error_is_a_config_error(
    error: Exception,
) -> None:
    """Only SettingsError was turned into a ConfigError: a factory's KeyError on a missing
    setting (the commonest plugin bug) escaped start-up as a traceback naming no service."""

    def factory(settings: Mapping[str, Any], context: ConnectorContext) -> Any:
        raise error

    with pytest.raises(ConfigError) as caught:
        build("mine", {"mine": factory})
    assert caught.value.field == "services[0].connector"
    assert type(error).__name__ in caught.value.problem


def test_a_settings_error_still_names_the_settings_table() -> None:
    def factory(settings: Mapping[str, Any], context: ConnectorContext) -> Any:
        raise SettingsError("mine: 'url' is required")

    with pytest.raises(ConfigError) as caught:
        build("mine", {"mine": factory})
    assert caught.value.field == "services[0].connector_settings"
    assert "'url' is required" in caught.value.problem


def test_a_connector_with_a_synchronous_method_is_refused_at_start_up() -> None:
    """``isinstance(c, Connector)`` checks method names only: a plugin whose ``ready`` (or
    ``start``, ``deliver``, ``close``) is a plain function passed, then failed on every
    ``await`` (start-up, every exchange, every readiness probe). Now it is refused, by name."""

    class SyncReady(FakeConnector):
        def ready(self) -> bool:  # type: ignore[override]
            return True

    with pytest.raises(ConfigError) as caught:
        build("mine", {"mine": lambda s, c: SyncReady()})
    assert "ready" in caught.value.problem and "async" in caught.value.problem


def test_build_connectors_names_the_service_whose_plugin_is_broken(
    site: Path, tmp_path: Path
) -> None:
    install(site, "broken-plugin", {"broken": "fakeplugin_nowhere_to_be_found:Factory"})
    cfg = make_deployment(tmp_path / "dep")
    text = cfg.read_text()
    cfg.write_text(text.replace('connector = "demo"', 'connector = "broken"', 1))
    with pytest.raises(ConfigError) as caught:
        build_connectors(load(cfg))
    assert caught.value.field == "services[0].connector"


POPPING = '''
from gateway.testing import FakeConnector


def factory(settings, context):
    """The "pop what you know, refuse what is left" idiom: it empties its settings table."""
    answer = settings.pop("answer")
    if settings:
        raise ValueError(f"unknown settings {sorted(settings)}")
    return FakeConnector({"answer": answer})
'''


def test_a_factory_that_consumes_its_settings_leaves_the_deployment_unchanged(
    site: Path, tmp_path: Path
) -> None:
    """Factories were handed the deployment's own settings dict. `gateway serve` builds
    every connector once in the parent (its start-up check) and again in each forked worker
    from the same Deployment: a factory that popped its keys (a common way to find unknown
    ones) passed the check, then every worker found its table empty and died. Each factory
    now gets a copy of its table."""
    install(site, "popping-plugin", {"popping": "fakeplugin_popping_plugin:factory"}, POPPING)
    cfg = make_deployment(tmp_path / "dep")
    text = cfg.read_text().replace(
        'connector = "demo"', 'connector = "popping"\nconnector_settings = { answer = 42 }', 1
    )
    cfg.write_text(text)
    dep = load(cfg)
    first = build_connectors(dep)  # the parent's check
    again = build_connectors(dep)  # a worker, after the fork
    assert first.keys() == again.keys()
    assert next(iter(dep.services.values())).spec.connector_settings == {"answer": 42}


def test_a_connector_whose_async_methods_are_wrapped_by_a_decorator_is_accepted() -> None:
    """The start-up check for async methods must not refuse a working plugin: a tracing
    decorator (functools.wraps around a plain function returning the coroutine) leaves a
    method that awaits fine but that inspect alone does not call a coroutine function."""
    import functools

    def traced(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        return wrapper

    class Traced(FakeConnector):
        ready = traced(FakeConnector.ready)
        deliver = traced(FakeConnector.deliver)

    assert isinstance(build("mine", {"mine": lambda s, c: Traced()}), Connector)


def test_a_connector_missing_a_method_is_refused_naming_the_method() -> None:
    """The refusal "does not implement the API" left a plugin author to guess which of the
    four methods the gateway wanted."""

    class NoClose:
        async def start(self) -> None: ...

        async def deliver(self, message: Any) -> Any: ...

        async def ready(self) -> bool:
            return True

    with pytest.raises(ConfigError) as caught:
        build("mine", {"mine": lambda s, c: NoClose()})
    assert "close()" in caught.value.problem
