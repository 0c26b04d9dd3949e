"""What the state database keeps of the prompts a cycle used: their digests and tags, the mean
score of a tag, and the regression set chosen after a promotion."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import sqlalchemy as sa

from cftrunner.prompts import Prompt, prompt_digest
from cftrunner.store import Store
from cftrunner.store.schema import items, runs
from tests.conftest import make_run


def create(store: Store, run_id: str, prompts: list[Prompt], cycle: str | None = "c",
           age: float = 0.0) -> None:
    run = make_run(run_id)
    created = run.created_at - timedelta(seconds=age)
    store.create_run(replace(run, cycle=cycle, created_at=created), prompts)
    with store.tx() as tx:  # as if created `age` seconds ago
        tx.conn.execute(runs.update().where(runs.c.id == run_id).values(created_at=created))


def score(store: Store, run_id: str, scores: list[float | None]) -> None:
    with store.tx() as tx:
        for position, value in enumerate(scores):
            tx.conn.execute(items.update().where(items.c.run_id == run_id,
                                                 items.c.position == position)
                            .values(score=value))


def test_a_cycle_s_run_notes_each_prompt_and_a_later_use_replaces_the_earlier(
        store: Store) -> None:
    create(store, "r1", [Prompt("a", "x"), Prompt("b")], age=10)
    create(store, "r2", [Prompt("b", "y"), Prompt("c")])
    create(store, "other", [Prompt("d")], cycle=None)
    with store.reading() as tx:
        used = tx.used_prompts("c")
        rows = tx.conn.execute(sa.text(
            "SELECT digest, run_id, position, tag FROM prompt_uses ORDER BY run_id, position"))
        where = {d: (r, p, t) for d, r, p, t in rows}
    assert set(used) == {prompt_digest(p) for p in "abc"}
    assert where == {prompt_digest("a"): ("r1", 0, "x"), prompt_digest("b"): ("r2", 0, "y"),
                     prompt_digest("c"): ("r2", 1, None)}
    assert used[prompt_digest("b")] > used[prompt_digest("a")]


def test_a_tag_s_mean_is_over_its_judged_prompts(store: Store) -> None:
    create(store, "r1", [Prompt("a", "x"), Prompt("b", "x"), Prompt("c", "y"), Prompt("d")])
    score(store, "r1", [0.2, 0.6, None, 0.1])
    with store.reading() as tx:
        means = tx.tag_means("c")
    assert means.keys() == {"x"} and abs(means["x"] - 0.4) < 1e-9
    with store.reading() as tx:
        assert tx.tag_means("another cycle") == {}


def test_the_regression_set_is_each_prompt_whose_last_score_was_weak_unless_found_fixed(
        store: Store) -> None:
    create(store, "r1", [Prompt("weak then good"), Prompt("weak"), Prompt("fixed before"),
                         Prompt("good")], age=30)
    score(store, "r1", [0.1, 0.2, 0.3, 0.9])
    create(store, "r2", [Prompt("weak then good"), Prompt("new weak")], age=20)
    score(store, "r2", [0.8, 0.05])
    # An earlier promotion's check found "fixed before" fixed (and "weak" still weak).
    with store.tx() as tx:
        tx.choose_rechecks(store.run("r2"), "m1", 0.5)
    for check in store.rechecks("r2"):
        with store.tx() as tx:
            tx.record_recheck("r2", check["position"],
                              score=0.9 if check["prompt"] == "fixed before" else 0.1)
    create(store, "r3", [Prompt("other cycle weak")], cycle="elsewhere", age=10)
    score(store, "r3", [0.0])
    create(store, "r4", [Prompt("this run weak"), Prompt("not judged")])
    score(store, "r4", [0.4, None])
    create(store, "r5", [Prompt("after this run")], age=-10)
    score(store, "r5", [0.0])

    with store.tx() as tx:
        assert tx.choose_rechecks(store.run("r4"), "m2", 0.5) == 3
    chosen = [(c["prompt"], c["earlier_run_id"], c["earlier_score"], c["model_id"], c["at"])
              for c in store.rechecks("r4")]
    assert chosen == [("weak", "r1", 0.2, "m2", None), ("new weak", "r2", 0.05, "m2", None),
                      ("this run weak", "r4", 0.4, "m2", None)]
