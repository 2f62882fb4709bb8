"""Fairness across keys (tests/contract/test_broker_fairness.py) over a private Redis Cluster:
the keyed streams, the ring and the scripts stay in the queue's slot."""

from __future__ import annotations

from tests.contract.test_broker_fairness import (
    _fair_only,
    test_a_blocked_receive_wakes_for_a_keyed_publish,
    test_closing_consumer_hands_keyed_messages_to_another,
    test_keyed_counted_nack_reaches_max_deliveries,
    test_keyed_eta_delays_and_keeps_the_key,
    test_keyed_extend_keeps_ownership,
    test_keyed_message_taken_over_by_lease_is_handed_back_on_close,
    test_keyed_messages_in_stats_and_purge,
    test_keyed_nack_requeue_and_dead_letter,
    test_keyed_unsettled_is_redelivered_counted,
    test_keys_take_turns_whatever_their_backlog,
    test_priority_orders_within_a_key,
)

__all__ = [
    "_fair_only",
    "test_a_blocked_receive_wakes_for_a_keyed_publish",
    "test_closing_consumer_hands_keyed_messages_to_another",
    "test_keyed_counted_nack_reaches_max_deliveries",
    "test_keyed_eta_delays_and_keeps_the_key",
    "test_keyed_extend_keeps_ownership",
    "test_keyed_message_taken_over_by_lease_is_handed_back_on_close",
    "test_keyed_messages_in_stats_and_purge",
    "test_keyed_nack_requeue_and_dead_letter",
    "test_keyed_unsettled_is_redelivered_counted",
    "test_keys_take_turns_whatever_their_backlog",
    "test_priority_orders_within_a_key",
]
