"""Every broker and backend implements its seam member by member: same names, same async-ness,
same parameters (names, kinds, defaults). `isinstance()` on a runtime Protocol only checks that
attribute names exist, so it cannot catch a missing keyword or a sync method; this can."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from aiotask.backends.base import ResultBackend
from aiotask.backends.memory import MemoryBackend
from aiotask.backends.redis import RedisBackend
from aiotask.backends.sqlite import SQLiteBackend
from aiotask.brokers.base import Broker
from aiotask.brokers.memory import MemoryBroker
from aiotask.brokers.rabbitmq import RabbitMQBroker
from aiotask.brokers.redis_streams import RedisStreamsBroker
from aiotask.brokers.sqlite import SQLiteBroker

IMPLEMENTATIONS: list[tuple[type, type]] = [
    (Broker, MemoryBroker),
    (Broker, SQLiteBroker),
    (Broker, RedisStreamsBroker),
    (Broker, RabbitMQBroker),
    (ResultBackend, MemoryBackend),
    (ResultBackend, SQLiteBackend),
    (ResultBackend, RedisBackend),
]


def seam_methods(protocol: type) -> dict[str, Any]:
    return {
        name: member
        for name, member in vars(protocol).items()
        if not name.startswith("_") and inspect.isfunction(member)
    }


def parameters(fn: Any) -> list[tuple[str, object, object]]:
    """(name, kind, default) of each parameter after self; annotations are left to mypy."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    return [(p.name, p.kind, p.default) for p in params]


def mismatches(protocol: type, impl: type) -> list[str]:
    found = []
    for name, spec in seam_methods(protocol).items():
        member = inspect.getattr_static(impl, name, None)
        if not inspect.isfunction(member):
            found.append(f"{impl.__name__}.{name} is missing")
            continue
        for check in (inspect.iscoroutinefunction, inspect.isasyncgenfunction):
            if check(spec) and not check(member):
                found.append(f"{impl.__name__}.{name} is not {check.__name__[2:]}")
        if parameters(member) != parameters(spec):
            found.append(
                f"{impl.__name__}.{name}{inspect.signature(member)} differs from "
                f"{protocol.__name__}.{name}{inspect.signature(spec)}"
            )
    return found  # attributes (capabilities) and annotations: mypy, by typed assignments


@pytest.mark.parametrize(
    ("protocol", "impl"), IMPLEMENTATIONS, ids=[i.__name__ for _, i in IMPLEMENTATIONS]
)
def test_implements_its_seam_member_by_member(protocol: type, impl: type) -> None:
    assert seam_methods(protocol)  # the protocol is read, not an empty stand-in
    assert mismatches(protocol, impl) == []


def test_the_check_catches_a_drifted_implementation() -> None:
    class Drifted(MemoryBroker):
        def ack(self, deliveries: Any) -> None:  # type: ignore[override]
            return None

        async def nack(self, deliveries: Any, *, requeue: bool) -> None:  # type: ignore[override]
            return None

    found = mismatches(Broker, Drifted)
    assert any("Drifted.ack is not coroutinefunction" in f for f in found)
    assert any(f.startswith("Drifted.nack(") for f in found)
