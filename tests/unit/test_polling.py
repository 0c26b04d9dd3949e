"""The waits between looks at the platform: soon, then backing off geometrically to a cap."""

from __future__ import annotations

import itertools

from cftrunner.polling import Backoff


def first(n: int, backoff: Backoff) -> list[float]:
    return list(itertools.islice(backoff.delays(), n))


def test_waits_start_soon_and_double_up_to_the_cap() -> None:
    assert first(8, Backoff(0.25, 2.0, 5.0)) == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_a_first_wait_above_the_cap_is_the_cap() -> None:
    assert first(3, Backoff(10.0, 2.0, 5.0)) == [5.0, 5.0, 5.0]


def test_a_factor_of_one_looks_at_a_steady_pace() -> None:
    assert first(4, Backoff(0.5, 1.0, 5.0)) == [0.5, 0.5, 0.5, 0.5]


def test_a_look_that_saw_progress_keeps_the_next_wait_as_short_as_the_last() -> None:
    delays = Backoff(0.25, 2.0, 5.0).delays()
    assert [delays.after(progress) for progress in (False, True, True, False, True, False)] == [
        0.25, 0.25, 0.25, 0.5, 0.5, 1.0]
