"""The test broker's choice (tools/brokers.py): its order and what it says, on a fake Docker."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from kcron.errors import BrokerError
from tools import brokers
from tools.brokers import APACHE_KAFKA_IMAGE, CP_KAFKA_IMAGE, DEV_BROKER_IMAGE, BrokerInfo


class FakeImages:
    def __init__(self, present: set[str], pullable: bool) -> None:
        self.present = present
        self.pullable = pullable
        self.pulled: list[str] = []

    def get(self, name: str) -> object:
        if name not in self.present:
            raise LookupError(name)
        return object()

    def pull(self, repository: str, tag: str) -> None:
        if not self.pullable:
            raise RuntimeError('Get "https://registry-1.docker.io/v2/": no such host')
        self.pulled.append(f"{repository}:{tag}")
        self.present.add(f"{repository}:{tag}")


class FakeDocker:
    def __init__(self, present: frozenset[str] = frozenset(), pullable: bool = False) -> None:
        self.images = FakeImages(set(present), pullable)


def _started(kind: str) -> Any:
    def start(_stack: contextlib.ExitStack, image: str = "", *_: Any) -> BrokerInfo:
        return BrokerInfo("127.0.0.1:1", kind, image or "embedded")

    return start


@pytest.fixture
def docker(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A fake engine and fake starters: what was started, built and pulled is recorded."""
    world: dict[str, Any] = {"client": FakeDocker(), "built": 0, "build_fails": False}

    def build() -> None:
        if world["build_fails"]:
            raise BrokerError(f"{DEV_BROKER_IMAGE} build failed: no tansu binary")
        world["built"] += 1
        world["client"].images.present.add(DEV_BROKER_IMAGE)

    monkeypatch.setattr(brokers, "docker_client", lambda: world["client"])
    monkeypatch.setattr(brokers, "_build_dev_image", build)
    monkeypatch.setattr(brokers, "_start_apache_kafka", _started("apache"))
    monkeypatch.setattr(brokers, "_start_cp_kafka", _started("cp"))
    monkeypatch.setattr(brokers, "_start_dev_broker", _started("dev"))
    monkeypatch.setattr(brokers, "_start_embedded", lambda stack, log: _started("embedded")(stack))
    return world


def choose(use_docker: bool = True) -> BrokerInfo:
    with brokers.select_broker(None, None, use_docker=use_docker) as found:
        return found


def test_an_external_cluster_comes_first_and_docker_is_not_asked(
    docker: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_docker() -> None:
        raise AssertionError("Docker was asked")

    monkeypatch.setattr(brokers, "docker_client", no_docker)
    with brokers.select_broker("kafka:9092") as found:
        assert (found.kind, found.bootstrap, found.why) == ("external", "kafka:9092", "")


def test_a_real_kafka_image_present_is_used_as_it_is(docker: dict[str, Any]) -> None:
    docker["client"] = FakeDocker(frozenset({CP_KAFKA_IMAGE}))
    found = choose()
    assert (found.kind, found.detail, found.why) == ("cp", CP_KAFKA_IMAGE, "")
    assert docker["built"] == 0


def test_a_missing_kafka_image_is_pulled(docker: dict[str, Any]) -> None:
    docker["client"] = FakeDocker(pullable=True)
    found = choose()
    assert (found.kind, found.detail) == ("apache", APACHE_KAFKA_IMAGE)
    assert docker["client"].images.pulled == [APACHE_KAFKA_IMAGE]


def test_a_failed_pull_falls_through_to_the_dev_image_built_on_the_spot(
    docker: dict[str, Any],
) -> None:
    found = choose()
    assert (found.kind, found.detail) == ("dev", DEV_BROKER_IMAGE)
    assert docker["built"] == 1
    assert f"{APACHE_KAFKA_IMAGE} pull failed: " in found.why and "no such host" in found.why
    assert f"{DEV_BROKER_IMAGE} built in" in found.why
    assert str(found).endswith(found.why), "the header line says why"


def test_a_present_dev_image_is_not_rebuilt(docker: dict[str, Any]) -> None:
    docker["client"] = FakeDocker(frozenset({DEV_BROKER_IMAGE}))
    found = choose()
    assert found.kind == "dev" and docker["built"] == 0


def test_no_image_and_no_build_ends_on_the_embedded_broker_saying_why(
    docker: dict[str, Any],
) -> None:
    docker["build_fails"] = True
    found = choose()
    assert found.kind == "embedded"
    assert "pull failed" in found.why and "build failed: no tansu binary" in found.why


def test_a_container_that_will_not_start_falls_through(
    docker: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_stack: contextlib.ExitStack, image: str) -> BrokerInfo:
        raise BrokerError(f"{image} did not listen in time")

    monkeypatch.setattr(brokers, "_start_apache_kafka", broken)
    docker["client"] = FakeDocker(frozenset({APACHE_KAFKA_IMAGE, DEV_BROKER_IMAGE}))
    found = choose()
    assert found.kind == "dev"
    assert f"container start failed: {APACHE_KAFKA_IMAGE} did not listen in time" in found.why


def test_without_docker_the_embedded_broker_says_so(docker: dict[str, Any]) -> None:
    docker["client"] = None
    assert "no Docker engine answers" in choose().why
    found = choose(use_docker=False)
    assert found.kind == "embedded" and "Docker not used" in found.why
