"""Pure unique/debounce key derivation and option validation (coordination/unique.py)."""

from __future__ import annotations

from typing import Any

import pytest

from aiotask import App
from aiotask.coordination.unique import (
    Coordination,
    build,
    check,
    debounce_key,
    signature_of,
    unique_key,
)
from aiotask.exceptions import ConfigurationError


def charge(customer_id: int, amount: float, note: str = "") -> None: ...


SIG = signature_of(charge, bind=False)


def test_default_key_is_task_name_and_all_arguments() -> None:
    a = unique_key("t.charge", None, [1, 2.5], {})
    assert a == unique_key("t.charge", None, (1, 2.5), {})  # tuple or list: one key
    assert a != unique_key("t.charge", None, [1, 3.0], {})
    assert a != unique_key("t.other", None, [1, 2.5], {})
    assert a.startswith("u:t.charge:")


def test_kwargs_order_does_not_change_the_key() -> None:
    one = unique_key("t", None, [], {"a": 1, "b": {"x": 1, "y": 2}})
    two = unique_key("t", None, [], {"b": {"y": 2, "x": 1}, "a": 1})
    assert one == two


def test_kwarg_name_key_ignores_other_arguments_and_finds_positional_values() -> None:
    by_kw = unique_key("t", "customer_id", [], {"customer_id": 7, "amount": 1.0}, SIG)
    by_pos = unique_key("t", "customer_id", [7, 99.0], {}, SIG)
    assert by_kw == by_pos
    assert by_kw != unique_key("t", "customer_id", [8, 1.0], {}, SIG)


def test_list_of_names_and_defaults() -> None:
    spec = ["customer_id", "note"]
    assert unique_key("t", spec, [7, 1.0], {}, SIG) == unique_key(
        "t", spec, [7, 2.0], {"note": ""}, SIG
    )
    assert unique_key("t", spec, [7, 1.0], {}, SIG) != unique_key("t", spec, [7, 1.0, "x"], {}, SIG)


def test_missing_key_argument_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="customer_id"):
        unique_key("t", "customer_id", [], {"amount": 1.0})  # no signature: kwargs only


def test_callable_key_gets_the_call_arguments() -> None:
    def key(customer_id: int, amount: float, **_: Any) -> int:
        return customer_id % 2

    assert unique_key("t", key, [1, 5.0], {}) == unique_key("t", key, [3, 6.0], {})
    assert unique_key("t", key, [1, 5.0], {}) != unique_key("t", key, [2, 5.0], {})


def test_unencodable_key_value_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="JSON"):
        unique_key("t", None, [object()], {})


def test_bound_task_signature_drops_the_context_parameter() -> None:
    def fn(ctx: object, doc_id: str, text: str) -> None: ...

    sig = signature_of(fn, bind=True)
    assert unique_key("t", "doc_id", ["d1", "x"], {}, sig) == unique_key(
        "t", "doc_id", [], {"doc_id": "d1", "text": "y"}, sig
    )


def test_debounce_key_defaults_to_the_task_name_alone() -> None:
    assert debounce_key("t.save", None, ["a"], {}) == debounce_key("t.save", None, ["b"], {})
    assert debounce_key("t.save", None, [], {}) != debounce_key("t.other", None, [], {})
    assert debounce_key("t.save", "doc", [], {"doc": 1}) != debounce_key(
        "t.save", "doc", [], {"doc": 2}
    )
    assert debounce_key("t", None, [], {}) != unique_key("t", None, [], {})


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"unique_until": "done"}, "unique_until"),
        ({"on_conflict": "skip"}, "on_conflict"),
        ({"unique_for": 0}, "unique_for"),
        ({"debounce": -1}, "debounce"),
        ({"unique_key": 3}, "unique_key"),
        ({"debounce_key": []}, "debounce_key"),
    ],
)
def test_bad_options_fail_at_definition(raw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        build("t", raw)


def test_no_options_means_no_coordination() -> None:
    assert build("t", {"queue": "q"}) is None
    assert build("t", {"unique": None}) is None


def test_call_options_override_task_options() -> None:
    task = Coordination(unique=True, unique_for=60.0, on_conflict="ignore")
    call = Coordination(on_conflict="replace")
    merged = call.over(task)
    assert merged == Coordination(unique=True, unique_for=60.0, on_conflict="replace")
    assert call.over(None) is call


def test_debounce_with_unique_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="debounce and unique"):
        check("t", Coordination(unique=True, debounce=1.0))


def test_task_decorator_validates_the_options() -> None:
    app = App("keys", broker="memory://")
    with pytest.raises(ConfigurationError, match="unique_until"):

        @app.task(unique=True, unique_until="never")  # type: ignore[call-overload]
        async def bad() -> None: ...

    @app.task(unique=True, unique_key="x", unique_for=5)
    async def good(x: int) -> None: ...

    assert good.options.coordination == Coordination(unique=True, unique_key="x", unique_for=5)


async def test_unknown_call_option_is_still_an_error() -> None:
    app = App("keys2", broker="memory://")

    @app.task
    async def t() -> None: ...

    with pytest.raises(ConfigurationError, match="uniq"):
        await t.apply_async(uniq=True)  # type: ignore[call-arg]


def test_a_call_can_turn_a_tasks_uniqueness_off() -> None:
    task = Coordination(unique=True, unique_key="x")
    assert task.is_unique
    assert not Coordination(unique=False).over(task).is_unique
    assert not Coordination(unique_for=5.0).is_unique  # a lifetime alone makes nothing unique


def test_debounce_verdicts() -> None:
    from aiotask.coordination.unique import RECORD_GRACE, Debounce, debounce_verdict

    assert debounce_verdict(None, "m", "10.0", 10.0) is Debounce.RUN  # no record: run
    assert debounce_verdict("m 10.0", "m", "10.0", 10.0) is Debounce.RUN  # its own
    assert debounce_verdict("later 11.0", "m", "10.0", 10.0) is Debounce.SUPERSEDED
    assert debounce_verdict("earlier 9.0", "m", "10.0", 10.0) is Debounce.WAIT  # not yet mine
    assert debounce_verdict("earlier 9.0", "m", "10.0", 10.0 + RECORD_GRACE) is Debounce.RUN
    # across an upgrade: an untimed record (older sender) is older than a timed message; an
    # untimed message (older sender) is superseded by any other record, as before
    assert debounce_verdict("old-format", "m", "10.0", 10.0) is Debounce.WAIT
    assert debounce_verdict("x 1.0", "m", None, 10.0) is Debounce.SUPERSEDED


async def test_the_latest_record_only_moves_forward() -> None:
    """Writes landing out of order leave the last send recorded."""
    from aiotask.backends._lock_memory import MemoryLockStore
    from aiotask.coordination.unique import latest_value, record_latest

    store = MemoryLockStore()
    await record_latest(store, "k", "b", "2.0", 60)
    await record_latest(store, "k", "a", "1.0", 60)  # the earlier send's write lands last
    assert await store.get("k") == latest_value("b", "2.0")
    await record_latest(store, "k", "c", "3.0", 60)
    assert await store.get("k") == latest_value("c", "3.0")
    await store.put("k", "older-version-id", 60)  # written by a sender before the upgrade
    await record_latest(store, "k", "d", "4.0", 60)
    assert await store.get("k") == latest_value("d", "4.0")
