"""The result store: one SQLite file, written only by the coordinating process.

Layout (one file, ``results.sqlite`` in a run directory):

``experiments``
    one row per experiment name: its definition (JSON), the digest of the parts that determine the
    numbers (:meth:`Experiment.model_digest`) and the fastmoe version that registered it;
``runs``
    one row per invocation of the runner (version, executor, workers, threads per job);
``results``
    one row per finished job, keyed by ``(experiment, n, replication)``, holding its status and the full
    job record as JSON. Each row is committed on its own as soon as its job returns, so an interruption
    (Ctrl-C, ``kill -9``, a dying worker) loses no finished job. A second result for a key already stored
    (a job re-run after its worker died) is ignored, so resuming never duplicates a job.

The database runs in WAL mode with ``synchronous=NORMAL``: a commit costs tens of microseconds and a crash
of the writing process cannot corrupt committed rows (a power loss may drop the last few).

Readers (``rates report``, ``rates compare``) open the store read-only (``ResultStore(path, read_only=True)``),
so an archived run on a read-only disk or in someone else's directory can be read, and reading never changes
a store. A file that is not a result store, or a damaged one, raises :class:`StoreError` with the path.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import json
import os
import socket
import sqlite3
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from .. import __version__
from ._atomic import atomic_open
from .definition import NOT_IN_DIGEST, Experiment

__all__ = ["ResultStore", "StoreError", "archive_conflict", "definition_changes", "flatten_record", "import_archive",
           "load_run", "read_csv", "store_path", "why_not_resumable", "write_csv", "write_rows", "write_parquet",
           "STORE_FILENAME", "CSV_FILENAME", "DEFINITION_FILENAME"]

#: File name of the store inside a run directory.
STORE_FILENAME = "results.sqlite"
#: The exported records and the definition that ran, beside the store (and all an archived run keeps:
#: results are committed to a repository as CSV, never as SQLite files).
CSV_FILENAME = "results.csv"
DEFINITION_FILENAME = "experiment.toml"
SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS experiments (
    name TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    definition TEXT NOT NULL,
    fastmoe_version TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment TEXT NOT NULL,
    started TEXT NOT NULL,
    fastmoe_version TEXT NOT NULL,
    executor TEXT NOT NULL,
    n_workers INTEGER,
    threads_per_job INTEGER,
    host TEXT
);
CREATE TABLE IF NOT EXISTS results (
    experiment TEXT NOT NULL,
    n INTEGER NOT NULL,
    replication INTEGER NOT NULL,
    status TEXT NOT NULL,
    run_id INTEGER,
    record TEXT NOT NULL,
    PRIMARY KEY (experiment, n, replication)
);
"""


#: The tables every result store has.
_TABLES = ("meta", "experiments", "runs", "results")


class StoreError(Exception):
    """A result store that cannot be opened or read: not a store, damaged, or not readable where it lies."""


def store_path(path) -> Path:
    """The database file of a run directory or store path (see :class:`ResultStore`)."""
    path = Path(path)
    return path if path.suffix in (".sqlite", ".sqlite3", ".db") else path / STORE_FILENAME


def utc_now() -> str:
    """The time now, UTC, ISO 8601 to the second (run records and logs)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _json_default(value):
    # NumPy scalars and arrays that slip into a record.
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot store a {type(value).__name__} in a job record")


def _dumps(record: dict) -> str:
    # allow_nan: NaN is a legitimate value (an empty Voronoi cell has no parameter error).
    return json.dumps(record, default=_json_default, allow_nan=True, separators=(",", ":"))


class ResultStore:
    """An SQLite store of job records (see the module docstring).

    Parameters
    ----------
    path : str or Path
        A run directory (the store is ``path / "results.sqlite"``; the directory is created when missing)
        or a file ending in ``.sqlite``, ``.sqlite3`` or ``.db``. Created with its tables when missing.
    read_only : bool, default=False
        Open an existing store for reading only: nothing is created or changed, and a store in a read-only
        directory can be read. Writing methods then fail.

    Raises
    ------
    FileNotFoundError
        ``read_only`` and there is no store at ``path``.
    StoreError
        The file is not a result store (garbage, truncated, another database) or cannot be read.

    Examples
    --------
    >>> with ResultStore(tmp_path) as store:          # doctest: +SKIP
    ...     store.register(experiment)
    ...     run_id = store.start_run(experiment.name, executor="local")
    ...     store.add(record, run_id)
    """

    def __init__(self, path, read_only: bool = False):
        path = store_path(path)
        self.path = path
        self.read_only = read_only
        self._conn = None
        try:
            if read_only:
                self._conn = _connect_read_only(path)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                # isolation_level=None: autocommit, one transaction per statement (one per row).
                self._conn = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.executescript(_SCHEMA)
                self._conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
                )
            tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
            self.close()
            raise StoreError(f"{path} is not a readable result store ({exc})") from None
        missing = [t for t in _TABLES if t not in tables]
        if missing:
            self.close()
            raise StoreError(f"{path} is not a fastmoe result store (it has no table {', '.join(missing)})")

    # -- lifetime -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- experiments --------------------------------------------------------------------------------
    def register(self, experiment: Experiment) -> None:
        """Store (or update) the definition of ``experiment``.

        A name already stored with another :meth:`~Experiment.model_digest`, or registered by another
        fastmoe version, is refused: its rows were computed by a different model or fit (a new version
        may stop or step differently) and must not be mixed. The grid (sample sizes, replications) may
        change between runs; the stored definition is the latest one.
        """
        row = self._conn.execute(
            "SELECT digest, fastmoe_version FROM experiments WHERE name = ?", (experiment.name,)
        ).fetchone()
        digest = experiment.model_digest()
        now = utc_now()
        if row is None:
            self._conn.execute(
                "INSERT INTO experiments (name, digest, definition, fastmoe_version, created, updated) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (experiment.name, digest, experiment.to_json(), __version__, now, now),
            )
        elif row[0] != digest:
            stored = json.loads(self._conn.execute(
                "SELECT definition FROM experiments WHERE name = ?", (experiment.name,)).fetchone()[0])
            raise ValueError(
                f"{self.path} already holds experiment {experiment.name!r} with a different definition "
                f"(digest {row[0]} vs {digest}; {definition_changes(stored, experiment.to_dict())} differ). "
                "Use another output directory or give the experiment another name."
            )
        elif row[1] != __version__:
            raise ValueError(
                f"{self.path} holds experiment {experiment.name!r} run by fastmoe {row[1]}, and this is "
                f"fastmoe {__version__}: its fits may differ, so the rows must not be mixed. Use "
                "another output directory, or finish the study with the version that started it."
            )
        else:
            self._conn.execute(
                "UPDATE experiments SET definition = ?, updated = ? WHERE name = ?",
                (experiment.to_json(), now, experiment.name),
            )

    def experiment_names(self) -> List[str]:
        """Names of the stored experiments."""
        return [r[0] for r in self._conn.execute("SELECT name FROM experiments ORDER BY created, name")]

    def experiment(self, name: Optional[str] = None) -> Experiment:
        """The stored definition of ``name`` (the only experiment when None)."""
        if name is None:
            names = self.experiment_names()
            if len(names) != 1:
                raise ValueError(f"{self.path} holds experiments {names}; name one")
            name = names[0]
        row = self._conn.execute("SELECT definition FROM experiments WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise KeyError(f"no experiment {name!r} in {self.path}")
        try:
            return Experiment.from_dict(json.loads(row[0]))
        except ValueError as exc:  # written by a version that let a malformed field pass
            raise StoreError(f"{self.path}: the stored definition of {name!r} is refused: {exc}") from None

    def version_of(self, name: str) -> str:
        """The fastmoe version that registered experiment ``name``."""
        row = self._conn.execute("SELECT fastmoe_version FROM experiments WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise KeyError(f"no experiment {name!r} in {self.path}")
        return row[0]

    # -- runs and results ---------------------------------------------------------------------------
    def start_run(self, experiment: str, executor: str, n_workers=None, threads_per_job=None) -> int:
        """Record an invocation of the runner and return its id (stored with every row it adds)."""
        cur = self._conn.execute(
            "INSERT INTO runs (experiment, started, fastmoe_version, executor, n_workers, threads_per_job, host) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (experiment, utc_now(), __version__, executor, n_workers, threads_per_job, socket.gethostname()),
        )
        return int(cur.lastrowid)

    def set_run_workers(self, run_id: int, n_workers: int) -> None:
        """Record the worker count of a run that learns it only once it has run (a Dask cluster's)."""
        self._conn.execute("UPDATE runs SET n_workers = ? WHERE run_id = ?", (int(n_workers), int(run_id)))

    def runs(self, experiment: Optional[str] = None) -> List[dict]:
        """The recorded invocations, oldest first."""
        sql = "SELECT * FROM runs" + (" WHERE experiment = ?" if experiment else "") + " ORDER BY run_id"
        cur = self._conn.execute(sql, (experiment,) if experiment else ())
        names = [c[0] for c in cur.description]
        return [dict(zip(names, row)) for row in cur]

    def add(self, record: dict, run_id: Optional[int] = None) -> bool:
        """Commit one job record; return False (and change nothing) when its key is already stored."""
        cur = self._conn.execute(
            "INSERT OR IGNORE INTO results (experiment, n, replication, status, run_id, record) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (record["experiment"], int(record["n"]), int(record["replication"]), record["status"], run_id,
             _dumps(record)),
        )  # autocommit mode: this statement is its own committed transaction
        return cur.rowcount == 1

    def import_records(self, experiment: Experiment, records: List[dict]) -> int:
        """Add an archive's records (:func:`read_csv` of an export) to this store, their run ids kept.

        The experiment is registered first (so a definition or version that differs is refused), and
        each run id the records name gets a row in ``runs`` (executor ``"archive"``), so that the runs
        this store records next are numbered after them. Returns how many records were new.
        """
        with self._transaction():  # all of it or none: a half-imported archive would read as a run
            self.register(experiment)
            return self._add_records(experiment.name, records, __version__, renumber=False)

    def merge_records(self, name: str, records: List[dict]) -> int:
        """Add an archive's records of the stored experiment ``name`` that this store lacks, as
        :meth:`import_records` does but without registering: for rows of the version and definition the
        store already holds (the caller checks, :func:`archive_conflict`), whichever fastmoe version runs
        now. Their run ids are renumbered after this store's own runs. Returns how many were new."""
        with self._transaction():
            return self._add_records(name, records, self.version_of(name), renumber=True)

    @contextlib.contextmanager
    def _transaction(self):
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _add_records(self, name: str, records: List[dict], version: str, renumber: bool) -> int:
        for position, record in enumerate(records):
            if not record.get("status") or record.get("n") is None or record.get("replication") is None:
                raise StoreError(f"record {position} of experiment {name!r} has no n, replication or status: "
                                 f"{ {key: record.get(key) for key in ('n', 'replication', 'status')} }")
        ids = sorted({int(r["run_id"]) for r in records if r.get("run_id") is not None})
        first = int(self._conn.execute("SELECT COALESCE(MAX(run_id), 0) FROM runs").fetchone()[0]) if renumber else 0
        new_id = {run_id: (first + rank + 1 if renumber else run_id) for rank, run_id in enumerate(ids)}
        for run_id in ids:
            self._conn.execute(
                "INSERT OR IGNORE INTO runs (run_id, experiment, started, fastmoe_version, executor) "
                "VALUES (?, ?, ?, ?, 'archive')", (new_id[run_id], name, utc_now(), version))
        added = 0
        for record in records:
            record = dict(record)
            run_id = record.pop("run_id", None)
            added += self.add(record, None if run_id is None else new_id[int(run_id)])
        return added

    def done_keys(self, experiment: str) -> set:
        """``{(n, replication)}`` already stored for ``experiment`` (any status)."""
        cur = self._conn.execute("SELECT n, replication FROM results WHERE experiment = ?", (experiment,))
        return {(int(n), int(r)) for n, r in cur}

    def mark_fresh(self) -> None:
        """Record that this store's study was started afresh beside an archive (``rates paper --fresh``,
        to measure new code): :func:`archive_conflict` never takes that archive's rows into it."""
        self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('fresh', '1')")

    @property
    def fresh(self) -> bool:
        """Whether :meth:`mark_fresh` was called on this store."""
        return self._conn.execute("SELECT value FROM meta WHERE key = 'fresh'").fetchone() is not None

    def keys(self) -> set:
        """``{(experiment, n, replication)}`` of every stored row."""
        return {(e, int(n), int(r)) for e, n, r in self._conn.execute("SELECT experiment, n, replication FROM results")}

    def count(self, experiment: Optional[str] = None, status: Optional[str] = None) -> int:
        """Number of stored rows, optionally for one experiment and/or status."""
        clauses, args = [], []
        if experiment is not None:
            clauses.append("experiment = ?")
            args.append(experiment)
        if status is not None:
            clauses.append("status = ?")
            args.append(status)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        return int(self._conn.execute("SELECT COUNT(*) FROM results" + where, args).fetchone()[0])

    def status_counts(self, experiment: str) -> dict:
        """``{status: count}`` for one experiment."""
        cur = self._conn.execute(
            "SELECT status, COUNT(*) FROM results WHERE experiment = ? GROUP BY status", (experiment,)
        )
        return {s: int(c) for s, c in cur}

    def delete(self, experiment: str, statuses: Iterable[str], keys: Optional[Iterable] = None) -> int:
        """Delete the rows of ``experiment`` with one of ``statuses`` (to re-run failed jobs); with ``keys``
        (``(n, replication)`` pairs: the grid about to run), only those rows, so that failures outside the
        grid stay on record."""
        statuses = list(statuses)
        if not statuses:
            return 0
        marks = ",".join("?" * len(statuses))
        sql = f"DELETE FROM results WHERE experiment = ? AND status IN ({marks})"
        if keys is None:
            return self._conn.execute(sql, [experiment, *statuses]).rowcount
        deleted = 0
        for n, replication in keys:
            deleted += self._conn.execute(sql + " AND n = ? AND replication = ?",
                                          [experiment, *statuses, int(n), int(replication)]).rowcount
        return deleted

    def records(self, experiment: Optional[str] = None) -> List[dict]:
        """All job records (dicts with ``run_id`` added), ordered by experiment, n, replication."""
        sql = "SELECT run_id, record FROM results"
        args: tuple = ()
        if experiment is not None:
            sql += " WHERE experiment = ?"
            args = (experiment,)
        sql += " ORDER BY experiment, n, replication"
        out = []
        for run_id, text in self._conn.execute(sql, args):
            record = json.loads(text)
            record["run_id"] = run_id
            out.append(record)
        return out

    # -- export -------------------------------------------------------------------------------------
    def export_csv(self, path, experiment: Optional[str] = None) -> Path:
        """Write the flattened records (:func:`flatten_record`) to a CSV file (:func:`write_csv`)."""
        return write_csv(self.records(experiment), path)

    def export_parquet(self, path, experiment: Optional[str] = None) -> Optional[Path]:
        """Write the flattened records to Parquet; return None when pyarrow is not installed."""
        return write_parquet(self.records(experiment), path)


def _connect_read_only(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise FileNotFoundError(f"no result store at {path}")
    uri = path.resolve().as_uri()
    conn = None
    try:
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None, timeout=30.0)
        conn.execute("SELECT name FROM sqlite_master").fetchall()  # the file is opened on the first read
        return conn
    except sqlite3.OperationalError:
        if conn is not None:
            conn.close()
        # A WAL database needs its -shm file, which a read-only directory does not let SQLite create (root
        # on a read-only mount hears "unable to open database file", a user without write permission
        # "attempt to write a readonly database"). There no process can be writing, so the file may be read
        # as immutable, unless a log holds rows that are not in it yet (a run killed before its last
        # checkpoint, then archived).
        if os.access(path.parent, os.W_OK):
            raise
    wal = path.with_name(path.name + "-wal")
    if wal.is_file() and wal.stat().st_size > 0:
        raise StoreError(f"{path} has a write-ahead log ({wal.name}) with rows not yet in the store, and its "
                         "directory is read-only, so SQLite cannot read them; copy the run directory somewhere "
                         "writable and report from there")
    return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None)


def write_csv(records: List[dict], path) -> Path:
    """Write job records, flattened (:func:`flatten_record`), to a CSV file, atomically."""
    return write_rows([flatten_record(r) for r in records], path)


def write_rows(rows: List[dict], path) -> Path:
    """Write flat rows (the union of their keys, in first-seen order, as columns) to a CSV file, atomically."""
    path = Path(path)
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=_columns(rows), restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(records: List[dict], path) -> Optional[Path]:
    """Write job records, flattened, to a Parquet file, atomically; None when pyarrow is not installed."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    rows = [flatten_record(r) for r in records]
    columns = _columns(rows)
    table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows])
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        pq.write_table(table, fh)
    return path


def _parse_cell(text: str):
    """One CSV cell back to the value :func:`flatten_record` wrote: JSON for nested values, bools, numbers."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    if text[0] in "[{":
        try:
            return json.loads(text)
        except ValueError:
            return text
    for kind in (int, float):  # float also reads nan and inf, as Python's csv wrote them
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_csv(path) -> List[dict]:
    """Job records from a CSV written by :func:`write_csv` (the inverse of :func:`flatten_record`).

    Nested values (parameters, seeds, warnings) come back from their JSON, ``True``/``False`` as bools,
    numbers as ``int`` or ``float`` (``nan`` included), empty cells as None: what the analysis reads
    from a store's records.
    """
    with open(path, newline="") as fh:
        return [{key: _parse_cell(value) for key, value in row.items()} for row in csv.DictReader(fh)]


def load_run(source, experiment: Optional[str] = None):
    """The definition, records and status counts of one experiment.

    Parameters
    ----------
    source : str, Path or ResultStore
        An open store, a store file, a run directory holding a store, or an archived run: a directory
        holding ``results.csv`` and ``experiment.toml`` but no store (what a repository keeps).
    experiment : str, optional
        The experiment to read when a store holds several; an archive holds one.

    Returns
    -------
    (Experiment, list of dict, dict)
        The definition, the records ordered by ``(n, replication)`` and ``{status: count}``.
    """
    if isinstance(source, ResultStore):
        store = source
    else:
        path = Path(source)
        if path.is_dir() and not (path / STORE_FILENAME).exists() and (path / CSV_FILENAME).is_file():
            return _load_archive(path, experiment)
        store = ResultStore(path, read_only=True)
    try:
        exp = store.experiment(experiment)
        return exp, store.records(exp.name), store.status_counts(exp.name)
    finally:
        if store is not source:
            store.close()


def _load_archive(path: Path, experiment: Optional[str]):
    definition = path / DEFINITION_FILENAME
    if not definition.is_file():
        raise FileNotFoundError(f"{path} holds {CSV_FILENAME} but no {DEFINITION_FILENAME}, so its rows cannot "
                                "be read as an experiment")
    exp = Experiment.load(definition)
    if experiment is not None and experiment != exp.name:
        raise KeyError(f"no experiment {experiment!r} in {path} (it holds {exp.name!r})")
    records = [r for r in read_csv(path / CSV_FILENAME) if r.get("experiment") == exp.name]
    records.sort(key=lambda r: (r["n"], r["replication"]))
    counts: dict = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return exp, records, counts


def definition_changes(old: dict, new: dict) -> str:
    """The top-level fields of two definitions (``Experiment.to_dict`` forms) that differ and enter the
    digest, named for a message: ``"theory, fit"``."""
    keys = sorted(key for key in (set(old) | set(new)) - set(NOT_IN_DIGEST) if old.get(key) != new.get(key))
    return ", ".join(keys) if keys else "no field (only the digest's encoding)"


def archive_conflict(store_dir, archive, name: str, merge: bool = True) -> Tuple[Optional[str], int]:
    """Whether exporting experiment ``name`` from the store in ``store_dir`` over ``archive`` would lose
    rows: ``(why, merged)``, ``why`` None when it would not, ``merged`` the archived jobs taken into the
    store first.

    An export replaces the archive's ``results.csv``. That loses nothing when the store holds every job
    the archive holds (it took them over, or ran them again: a study run afresh replaces its archive once
    it has every job the archive has). With ``merge``, archived jobs the store lacks are taken into it
    first when the archive has the store's experiment, definition (digest) and fastmoe version (an older
    checkout's store, the archive advanced elsewhere); otherwise they would be lost, and ``why`` says
    why. (Without ``merge``, or into a store started afresh to measure new code (``ResultStore.fresh``),
    they never are.)
    """
    archive, store_dir = Path(archive), Path(store_dir)
    if not (archive / CSV_FILENAME).is_file():
        return None, 0
    rows = read_csv(archive / CSV_FILENAME)
    with ResultStore(store_dir, read_only=True) as store:
        held = store.keys()  # another experiment's rows in the same store are held too
        missing = {(r.get("experiment"), r.get("n"), r.get("replication")) for r in rows} - held
        if not missing:
            return None, 0
        stored, version = store.experiment(name), store.version_of(name)
        merge = merge and not store.fresh
    # A run directory's own export may have no experiment.toml beside it (a run made through the Python
    # API): its definition is the store's.
    own = archive.resolve() == store_path(store_dir).parent.resolve()
    why = _why_not_mixed(archive, rows, stored, version, definition_optional=own)
    if why is None and merge:
        with ResultStore(store_dir) as store:
            merged = store.merge_records(name, [r for r in rows
                                                if (r.get("experiment"), r.get("n"), r.get("replication")) in missing])
        return None, merged
    if why is None:
        why = "rows a fresh run does not take over"
    return (f"{archive} holds {len(missing)} jobs that the store in {store_dir} lacks; it holds {why}: exporting "
            "would lose them. Run the study until it has every job the archive has, or replace the archive on purpose "
            "(--replace-archive)"), 0


def _why_not_mixed(archive: Path, rows: List[dict], experiment: Experiment, version: str,
                   definition_optional: bool = False) -> Optional[str]:
    """What ``archive`` (its ``rows`` read) holds instead of rows of ``experiment`` run by fastmoe
    ``version``, worded to follow "the archive holds" (None when it holds those, so that a store of
    them may take its rows)."""
    name = experiment.name
    if (archive / DEFINITION_FILENAME).is_file():
        archived = Experiment.load(archive / DEFINITION_FILENAME)
        if archived.name != name:
            return f"rows of the experiment {archived.name!r}"
        if archived.model_digest() != experiment.model_digest():
            return (f"another definition (digest {archived.model_digest()}: "
                    f"{definition_changes(archived.to_dict(), experiment.to_dict())} differ)")
    elif not definition_optional:
        return f"{CSV_FILENAME} but no {DEFINITION_FILENAME} (its rows cannot be read as a study)"
    others = sorted({str(r.get("experiment")) for r in rows} - {name})
    if others:
        return f"rows of the experiment {others[0]!r}"
    versions = sorted({str(r.get("fastmoe_version")) for r in rows} - {version})
    if versions:
        return f"rows of fastmoe {', '.join(versions)}, not {version}"
    return None


def import_archive(experiment: Experiment, out, archive) -> tuple:
    """Seed a run directory without a store from an archive of the same study: ``(jobs taken over, why
    not)``, ``why not`` None when the archive's rows were taken over (or there is no archive).

    Only when ``out`` holds no store of the study yet (none, or one an interrupted take-over left
    without it) and the archive holds ``experiment``, with its digest, in rows of this fastmoe version;
    else the rows must not be mixed, and ``why not`` says which differs. One transaction: all of the
    rows or none.
    """
    out, archive = Path(out), Path(archive)
    if not (archive / CSV_FILENAME).is_file():
        return 0, None
    if (out / STORE_FILENAME).exists():
        with ResultStore(out, read_only=True) as store:
            if experiment.name in store.experiment_names():
                return 0, None  # the store runs this study (archived jobs it lacks: archive_conflict)
    rows = read_csv(archive / CSV_FILENAME)
    why = _why_not_mixed(archive, rows, experiment, __version__)
    if why:
        return 0, f"{archive} holds {why}"
    with ResultStore(out) as store:
        return store.import_records(experiment, rows), None


def why_not_resumable(experiment: Experiment, archive) -> Optional[str]:
    """Why a run of ``experiment`` cannot go on from ``archive``'s rows (no definition beside them,
    another experiment or definition, rows of another fastmoe version), or None when it can (or there
    is no archive)."""
    archive = Path(archive)
    if not (archive / CSV_FILENAME).is_file():
        return None
    why = _why_not_mixed(archive, read_csv(archive / CSV_FILENAME), experiment, __version__)
    return None if why is None else f"{archive} holds {why}"


def flatten_record(record: dict) -> dict:
    """A record as one flat row: nested values (fitted parameters, seeds) become JSON strings."""
    out = {}
    for key, value in record.items():
        if isinstance(value, (dict, list, tuple)):
            out[key] = json.dumps(value, default=_json_default)
        else:
            out[key] = value
    return out


def _columns(rows: List[dict]) -> List[str]:
    columns: dict = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, None)
    return list(columns)
