"""Shared fixtures. ``mosquitto``: a private, started Mosquitto for one test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from broker import BrokerNotFoundError, LocalBroker

# CI draws the same property-test examples on every run, so a red run is reproducible and a
# green one does not depend on the draw; local runs keep exploring new examples.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test using the broker fixture, so ``-m "not broker"`` deselects it."""
    for item in items:
        if "mosquitto" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)


@pytest.fixture(autouse=True, scope="session")
def private_profile_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Device agents (in-process and child processes alike) cache block timings in a folder
    of this run's, never in the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("profile-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ARES_PROFILE_CACHE_DIR", str(folder))
        yield


@pytest.fixture
def mosquitto() -> Iterator[LocalBroker]:
    """A started LocalBroker on a free loopback port, stopped after the test.

    Function scope: a start takes about 15 ms and a stop under 10 ms (up to 0.1 s), so
    each test gets a fresh broker with no retained messages or sessions from others.
    A missing mosquitto binary fails the test (with the install hint) rather than
    skipping it: CI must run the real-broker tests.
    """
    broker = LocalBroker()
    try:
        broker.start()
    except BrokerNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()
