"""Which run ids are accepted: plain ASCII names, the same rule for every command."""

from __future__ import annotations

import pytest

from cftrunner.exceptions import InputError
from cftrunner.run_ids import check_run_id, new_run_id


@pytest.mark.parametrize("run_id", ["a", "7", "first-run", "nightly_2026.11.21", "A.b-c_d",
                                    "a..b", "x" * 100])
def test_a_plain_ascii_name_is_a_run_id(run_id: str) -> None:
    assert check_run_id(run_id) == run_id


def test_a_made_up_run_id_is_a_run_id() -> None:
    assert check_run_id(new_run_id())


@pytest.mark.parametrize("run_id", ["", ".", "..", ".hidden", "x" * 101, "a/b", "a b", "a\n",
                                    "a\x00", "\u0661\u0662\u0663", "caf\u00e9", "\uff11",
                                    "run$1"])
def test_anything_else_is_refused_naming_the_rule(run_id: str) -> None:
    with pytest.raises(InputError) as refused:
        check_run_id(run_id)
    assert refused.value.message == (
        f"run id {run_id!r} must be 1 to 100 ASCII letters, digits, '-', '_' or '.', not "
        "starting with '.'")
