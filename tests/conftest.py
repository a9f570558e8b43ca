"""Shared fixtures: a private system bus served by a real dbus-daemon, dbusmock's logind and
polkitd on it, and kjumpd's D-Bus service running in-process against a controllable hibernator.

Any test may use ``system_bus`` (the bus address, also exported as
``DBUS_SYSTEM_BUS_ADDRESS``), ``polkitd``/``logind`` (the mock processes with a
pydbus proxy of their control interface), ``fake_hibernator`` and
``kjumpd_service``; the helpers behind them (``start_dbus_daemon`` for buses
with a custom configuration, ``connect``, ``wait_for``…) are in dbus_testing.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dbus_testing import FakeHibernator, InProcessDaemon, Mock, spawn_mock, start_dbus_daemon, stop_mock


@pytest.fixture
def system_bus(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private, permissive system bus; its address is also in DBUS_SYSTEM_BUS_ADDRESS."""
    bus = start_dbus_daemon(tmp_path_factory.mktemp("bus"))
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
    yield bus.address
    bus.stop()


@pytest.fixture
def polkitd(system_bus: str) -> Iterator[Mock]:
    """dbusmock's polkitd: denies everything until ``proxy.SetAllowed([...])``."""
    mock = spawn_mock(system_bus, "polkitd")
    yield mock
    stop_mock(mock)


@pytest.fixture
def logind(system_bus: str) -> Iterator[Mock]:
    """dbusmock's logind; emit PrepareForSleep with ``proxy.EmitSignal(...)``."""
    mock = spawn_mock(system_bus, "logind")
    yield mock
    stop_mock(mock)


@pytest.fixture
def fake_hibernator() -> FakeHibernator:
    return FakeHibernator()


@pytest.fixture
def kjumpd_service(system_bus: str, polkitd: Mock, logind: Mock, fake_hibernator: FakeHibernator) -> Iterator[InProcessDaemon]:
    """kjumpd serving org.kjump.Hibernate1 on ``system_bus`` with the fake hibernator."""
    from kjumpd.daemon.config import Config

    daemon = InProcessDaemon(system_bus, fake_hibernator, Config(image_target="/var/lib/kjump/image"))
    yield daemon
    daemon.stop()


#: modules whose tests build or install the Debian package
PACKAGE_MODULES = {"test_packaging.py"}
#: modules whose tests run whole programs: the simulated machine's B/R/C processes, kjumpctl and the
#: bench as commands, initramfs builds, loop devices, umockdev's test bed
INTEGRATION_MODULES = {"test_cycle_sim.py", "test_ctl_image.py", "test_initramfs.py", "test_initramfs_hook.py",
                       "test_target_devices.py", "test_bench_sample.py", "test_devices.py", "test_restore_stream.py"}
#: fixtures that bring up a dbus-daemon (the others build on these)
BUS_FIXTURES = {"system_bus", "strict_bus"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every test its tier (pyproject.toml lists them): package, bus, integration, or unit for the rest."""
    for item in items:
        # vm and system tests, and tests that give their tier themselves (the demo brings its own bus)
        if any(item.get_closest_marker(tier) for tier in ("vm", "system", "bus", "package")):
            continue
        if item.path.name in PACKAGE_MODULES:
            item.add_marker(pytest.mark.package)
        elif BUS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.bus)
        elif item.path.name in INTEGRATION_MODULES:
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)
