"""Item reads a page at a time: a run's items filtered and ordered, never all rows at once."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

import sqlalchemy as sa

from cftrunner.records import Item
from cftrunner.states import ItemStage
from cftrunner.store.core import Core
from cftrunner.store.schema import completions, items

PAGE = 500  # items per read: each page is a short read transaction of its own

# The tokens of every completion of the item (generate and judge, retries included), from the
# completions' item_id index.
_TOKENS = (sa.select(sa.func.coalesce(sa.func.sum(completions.c.total_tokens), 0))
           .where(completions.c.item_id == items.c.id).scalar_subquery().label("tokens"))


class ItemPages(Core):
    """The run's items read in pages with keyset pagination: each page starts after the last
    item of the one before, by (position) or by (score, unscored last, position), so a page
    costs the same however deep into the run it is, and only one page is held at a time."""

    def item_pages(self, run_id: str, *, stages: Collection[ItemStage] | None = None,
                   below: float | None = None, above: float | None = None,
                   by_score: bool = False, page: int = PAGE) -> Iterator[list[tuple[Item, int]]]:
        """The run's items, each with its tokens, a page of at most `page` at a time: those at
        one of `stages` (all when None; none when empty), scored below `below` (score <
        below), at or above `above` (score >= above); in position order, or by score ascending
        with the unscored last (`by_score`), ties by position. Each item comes once, in order,
        even while the run goes on: positions never change, and a score is set only once."""
        if stages is not None and not stages:
            return
        query = sa.select(items, _TOKENS).where(items.c.run_id == run_id)
        if stages is not None:
            query = query.where(items.c.stage.in_(sorted(s.value for s in stages)))
        if below is not None:
            query = query.where(items.c.score < below)
        if above is not None:
            query = query.where(items.c.score >= above)
        order = ([items.c.score.asc().nulls_last(), items.c.position] if by_score
                 else [items.c.position])
        query = query.order_by(*order).limit(page)
        last: Item | None = None
        while True:
            with self._read() as conn:
                rows = conn.execute(query if last is None
                                    else query.where(_after(last, by_score))).all()
            found = [_item_and_tokens(row) for row in rows]
            if found:
                yield found
            if len(found) < page:
                return
            last = found[-1][0]


def _after(last: Item, by_score: bool) -> sa.ColumnElement[bool]:
    """The keyset condition: the items that come after `last` in the order read."""
    later = items.c.position > last.position
    if not by_score:
        return later
    if last.score is None:  # the unscored come last, by position
        return sa.and_(items.c.score.is_(None), later)
    return sa.or_(items.c.score > last.score, sa.and_(items.c.score == last.score, later),
                  items.c.score.is_(None))


def _item_and_tokens(row: sa.Row[Any]) -> tuple[Item, int]:
    fields = dict(row._mapping)
    tokens = int(fields.pop("tokens") or 0)
    return Item(**{**fields, "stage": ItemStage(fields["stage"])}), tokens
