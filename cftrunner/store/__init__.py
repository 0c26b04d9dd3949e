"""The state store, the one place with SQL: `Store` opens a state database (SQLite or PostgreSQL)
and offers its transactions, reads, run creation, leases and item claims.

    core.py      opening the database, write and read transactions
    writes.py    Tx: the writes of one transaction, each checking the state it changes from
    reads.py     the read queries
    items.py     a run's items filtered and ordered, read a page at a time (items, export)
    runs.py      creating runs, asking to cancel one
    leases.py    a run's lease, workers and their claims on items
    calibrations.py   the judge's scores of a run's calibration set
    deliveries.py   notifications to send, and how each delivery went
    watch.py     each cycle's latest run and last success, for the metrics file
    rows.py      row → record mapping
    errors.py    database errors translated into cftrunner's own
    schema.py, dialect.py, migrations/   the tables, the database quirks, the schema history
"""

from __future__ import annotations

from cftrunner.store.calibrations import Calibrations
from cftrunner.store.core import missing_sqlite_file, without_password
from cftrunner.store.deliveries import Deliveries
from cftrunner.store.items import ItemPages
from cftrunner.store.leases import Leases
from cftrunner.store.prune import Pruning
from cftrunner.store.reads import Reads
from cftrunner.store.runs import Runs
from cftrunner.store.watch import Watch

__all__ = ["Store", "missing_sqlite_file", "without_password"]


class Store(Reads, ItemPages, Runs, Leases, Pruning, Calibrations, Deliveries, Watch):
    """One state database: opened (and brought to the current schema) by `Store(url)`, or
    `Store.existing(url)` for one that must be there already; closed by `close()`."""
