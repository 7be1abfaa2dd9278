"""The state database: one SQLite file (WAL) holding images, pods, apps, tags and the event log.

Every state change runs in one transaction that also appends its event (``StateDB.transaction``).
"""

from jetpack.state.db import SCHEMA_VERSION, StateDB, Transaction

__all__ = ["SCHEMA_VERSION", "StateDB", "Transaction"]
