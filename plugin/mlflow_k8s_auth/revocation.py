"""Fresh revocation: a change counter in the auth database that every worker watches.

Every worker process of every replica keeps short-lived caches in front of the auth store
(`permission_cache`: users and grants; MLflow's own basic-auth credential cache). A
permission change made in one process must reach all of them within a second, while the
warm request path stays as cheap as it is with the caches on. The design:

* **One row, one number.** Table `k8s_auth_change_counter` holds a single row whose
  `version` is incremented after every successful write through MLflow's auth store, in
  whatever process makes it: MLflow's user/permission/role API (create, update, delete,
  the admin flag), MLflow's own grant hooks (a new experiment's MANAGE grant, the grant
  sweep of a deleted model), the k8s-auth client's namespace calls (they are MLflow role
  API calls on the server), just-in-time user provisioning, and the config sync at start
  (a restart with a new `[k8s_auth]`). Hooking the store's write methods, not a list of
  routes, is what makes every present and future mutating route covered without naming
  it; the bump follows the write's commit, so whoever sees the new number reads the new
  grants.
* **Read lazily, at most once per interval.** Before a cached read (and first thing in
  each Flask request) a worker compares the clock with its next check time; at most once
  per `revocation_check_interval_seconds` (default 0.3 s) one thread of the worker runs
  one primary-key SELECT of the number, and when it moved (or cannot be read) it clears
  the worker's caches. No thread, no connection held open, nothing on the request path
  but a clock read when no check is due. A change is therefore seen by every worker
  within the interval plus one query, however long the worker was idle.
* **Why not LISTEN/NOTIFY.** It needs a PostgreSQL connection held by a listener thread
  in every worker (and reconnect logic), does not exist on SQLite, and a missed
  notification (a dropped connection) would silently leave a cache stale; a polled number
  cannot be missed and works on every database MLflow supports.

What is not cleared: the token review cache (a ServiceAccount's identity does not change
with a grant; a deleted ServiceAccount is bounded by `token_cache_ttl_seconds`, which may
be 0). Writes made behind MLflow's back (SQL by hand) do not move the counter; they show up
within `permission_cache_ttl_seconds`.

The table is created in the `mlflow server` process before any worker starts (next to
MLflow's own admin bootstrap), idempotently and safely when several replicas start at once
against one database; a worker that finds it missing creates it the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from . import metrics

_log = logging.getLogger(__name__)

TABLE_NAME = "k8s_auth_change_counter"
_ROW_ID = 1
_METADATA = sa.MetaData()
TABLE = sa.Table(
    TABLE_NAME, _METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.BigInteger, nullable=False),
)
_SELECT = sa.select(TABLE.c.version).where(TABLE.c.id == _ROW_ID)
_BUMP = sa.update(TABLE).where(TABLE.c.id == _ROW_ID).values(version=TABLE.c.version + 1)


def ensure_schema(engine: sa.Engine) -> None:
    """Create the table and its row if absent. Safe when replicas race: a concurrent CREATE
    or INSERT that loses is fine as long as the winner's table and row are there."""
    try:
        TABLE.create(engine, checkfirst=True)
    except SQLAlchemyError:
        if not sa.inspect(engine).has_table(TABLE_NAME):
            raise
    with engine.connect() as conn:
        if conn.execute(_SELECT).first() is not None:
            return
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(TABLE).values(id=_ROW_ID, version=0))
    except IntegrityError:
        pass  # another process inserted it first


def bump(engine: sa.Engine) -> bool:
    """Move the counter (every worker of every replica clears its caches). False on failure."""
    failure = "missing row"
    for attempt in range(3):
        try:
            with engine.begin() as conn:
                if conn.execute(_BUMP).rowcount:
                    metrics.PERMISSION_VERSION_BUMPS.labels(result="ok").inc()
                    return True
            ensure_schema(engine)  # the row (or table) is missing: make it, then bump again
        except SQLAlchemyError as exc:
            # SQLite under write contention ("database is locked"): retry shortly.
            failure = type(exc).__name__  # the type only: messages can quote parameters
            time.sleep(0.05 * (attempt + 1))
    metrics.PERMISSION_VERSION_BUMPS.labels(result="error").inc()
    _log.warning("could not record a permission change for other processes (%s); they see it "
                 "within permission_cache_ttl_seconds", failure)
    return False


class ChangeWatcher:
    """Per-process: reads the counter at most once per interval and calls `on_change`
    when it moved since the last read (or cannot be read)."""

    def __init__(self, engine_of: Callable[[], sa.Engine], interval_seconds: float,
                 on_change: Callable[[str], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._engine_of = engine_of
        self._interval = interval_seconds
        self._on_change = on_change
        self._clock = clock
        self._next_check = 0.0
        self._seen: int | None = None
        self._checking = threading.Lock()
        self._failing = False

    def check(self) -> None:
        """Cheap unless a check is due; never raises (a failed read clears the caches)."""
        if self._clock() < self._next_check:
            return
        if not self._checking.acquire(blocking=False):
            return  # another thread of this process is reading the counter right now
        try:
            started = self._clock()
            if started < self._next_check:
                return
            self._next_check = started + self._interval
            self._read_and_compare()
        finally:
            self._checking.release()

    def _read_and_compare(self) -> None:
        try:
            version = self._read()
        except Exception as exc:  # noqa: BLE001 - unknown state: assume a change
            metrics.PERMISSION_VERSION_CHECKS.labels(result="error").inc()
            if not self._failing:
                _log.warning("cannot read the permission change counter (%s): caches are cleared "
                             "on every check until it can be read again", type(exc).__name__)
            self._failing = True
            self._seen = None
            self._on_change("check_failed")
            return
        if self._failing:
            _log.info("the permission change counter can be read again")
            self._failing = False
        moved = version != self._seen
        metrics.PERMISSION_VERSION_CHECKS.labels(result="changed" if moved else "unchanged").inc()
        if moved:
            self._seen = version
            metrics.PERMISSION_VERSION_SEEN.set(version)
            self._on_change("other_process")

    def _read(self) -> int:
        engine = self._engine_of()
        try:
            with engine.connect() as conn:
                row = conn.execute(_SELECT).first()
        except SQLAlchemyError:
            if sa.inspect(engine).has_table(TABLE_NAME):
                raise
            row = None
        if row is None:  # started without the CLI process's bootstrap: make it here
            ensure_schema(engine)
            with engine.connect() as conn:
                row = conn.execute(_SELECT).one()
        return int(row[0])


def clear_mlflow_credential_cache() -> None:
    """MLflow's basic-auth credential cache (per process) holds users: a password change,
    a demotion or a deletion made elsewhere must not outlive the next check."""
    from mlflow.server import auth as mlflow_auth

    cache: Any = getattr(mlflow_auth, "_USER_AUTH_CACHE", None)
    lock: Any = getattr(mlflow_auth, "_USER_AUTH_CACHE_LOCK", None)
    if cache is None or lock is None:
        return
    with lock:
        cache.clear()


def install(store: Any, ttl_seconds: float, max_entries: int, interval_seconds: float) -> ChangeWatcher:
    """Wrap `store` (permission cache + counter bump on every write) and return the watcher
    that clears this process's caches when another process changed something."""
    from . import permission_cache

    def on_change(cause: str) -> None:
        cache.clear(cause)
        clear_mlflow_credential_cache()

    watcher = ChangeWatcher(lambda: store.engine, interval_seconds, on_change)
    cache = permission_cache.install(store, ttl_seconds, max_entries, check=watcher.check,
                                     bump=lambda: bump(store.engine))
    return watcher


def check_first_in_every_request(flask_app: Any, watcher: ChangeWatcher) -> None:
    """Look at the counter before MLflow's own `before_request` (which authenticates with
    MLflow's credential cache and then reads grants)."""
    def check_change_counter() -> None:
        watcher.check()

    flask_app.before_request_funcs.setdefault(None, []).insert(0, check_change_counter)


def record_change_at_start(store: Any) -> None:
    """In the `mlflow server` process, after the auth DB is migrated and the config synced:
    make the table, then tell the running replicas that the config may have changed grants."""
    ensure_schema(store.engine)
    bump(store.engine)
