"""The judge's scores of a run's calibration set: kept one by one as they come, and read back."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from cftrunner.clock import utcnow
from cftrunner.store import dialect
from cftrunner.store.core import Core
from cftrunner.store.schema import calibrations
from cftrunner.store.writes import Tx


def record_calibration(tx: Tx, run_id: str, position: int, **fields: Any) -> bool:
    """Keep the judge's score (or why there is none) of one calibration triple; one already kept
    stays as it is. True when this one was kept."""
    return dialect.insert_ignoring_duplicates(tx.conn, calibrations, ("run_id", "position"),
                                              run_id=run_id, position=position, at=utcnow(),
                                              **fields)


class Calibrations(Core):
    """The reads of the calibration set's results."""

    def calibrations(self, run_id: str) -> list[dict[str, Any]]:
        """The run's calibration results kept so far, by position."""
        with self._read() as conn:
            rows = conn.execute(sa.select(calibrations).where(calibrations.c.run_id == run_id)
                                .order_by(calibrations.c.position)).all()
        return [dict(r._mapping) for r in rows]
