"""Report history in SQLite: every report appended with its git commit, target, model and
config hash; one marked accepted is the baseline later reports are compared with, and the
history records who accepted it, when, and with how many regressions.

WAL journal and a busy timeout let two reports write at once; each append is one
transaction that only inserts (git, the clock and the user are asked before the write lock
is taken), so a process killed mid-write leaves the history as it was before, and a slow
git never holds other reports up. A file that is not a history (garbage, truncated,
another program's database, a folder) is refused with one line before anything is written
to it; a history of an older schema gains the new columns.
"""
from __future__ import annotations

import contextlib
import functools
import getpass
import json
import os
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from pipeline.errors import StaleArtifactError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    git_commit TEXT,
    target TEXT NOT NULL,
    model TEXT NOT NULL,
    config_hash TEXT,
    accepted INTEGER NOT NULL DEFAULT 0,
    summary TEXT NOT NULL,
    accepted_by TEXT,
    accepted_at TEXT,
    accepted_with_failures INTEGER
)"""
COLUMNS = ("id", "created", "git_commit", "target", "model", "config_hash", "accepted", "summary")
# Added after the first release: (name, type), appended with ALTER TABLE to older histories.
ADDED_COLUMNS = (("accepted_by", "TEXT"), ("accepted_at", "TEXT"), ("accepted_with_failures", "INTEGER"))
MOVE_ASIDE = "move it aside and a new history starts"

F = TypeVar("F", bound=Callable[..., Any])


class HistoryError(StaleArtifactError):
    """A history file that cannot be used: not SQLite, damaged, another schema, locked."""


@dataclass(frozen=True)
class Stamp:
    """When, from which commit and by whom: gathered before the history is locked."""

    created: str
    git_commit: str | None
    user: str


def open_history(path: Path) -> sqlite3.Connection:
    """Open (or start) the history at ``path``; anything that is not one is a HistoryError."""
    path = Path(path)
    if path.is_dir():
        raise HistoryError(f"{path}: is a folder, not a report history file; {MOVE_ASIDE}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HistoryError(f"{path}: cannot make its folder ({exc.strerror})") from None
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
    try:
        with _translated(path):
            conn.execute("PRAGMA busy_timeout=30000")
            _check_readable(conn, path)
            fresh = _check_schema(conn, path)  # before WAL: setting it writes to the file
            conn.execute("PRAGMA journal_mode=WAL")
            _create_or_migrate(conn, fresh)
    except BaseException:
        conn.close()
        raise
    conn.row_factory = sqlite3.Row
    return conn


def _check_readable(conn: sqlite3.Connection, path: Path) -> None:
    """A truncated or overwritten file fails here, not half-way through a report."""
    problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise HistoryError(f"{path}: damaged ({problems[0]}); restore it from a backup or {MOVE_ASIDE}")


def _check_schema(conn: sqlite3.Connection, path: Path) -> bool:
    """True for an empty database (a new history); raises for one that holds anything else."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    tables.discard("sqlite_sequence")
    if not tables:
        return True
    if "runs" not in tables:
        raise HistoryError(f"{path}: a SQLite database but not a report history (tables "
                           f"{', '.join(sorted(tables))}; no 'runs'); point report.history elsewhere")
    missing = [c for c in COLUMNS if c not in _columns(conn)]
    if missing:
        raise HistoryError(f"{path}: a SQLite database but not a report history (its 'runs' table has no "
                           f"column {', '.join(missing)}); point report.history elsewhere")
    return False


def _create_or_migrate(conn: sqlite3.Connection, fresh: bool) -> None:
    """Make the table, or add the columns an older history lacks, in one write transaction
    (re-read inside it: another report may be migrating the same file)."""
    if not fresh and all(name in _columns(conn) for name, _ in ADDED_COLUMNS):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(SCHEMA)
        have = _columns(conn)
        for name, kind in ADDED_COLUMNS:
            if name not in have:
                conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _columns(conn: sqlite3.Connection) -> set[str]:
    return {row[1] for row in conn.execute("PRAGMA table_info(runs)")}


def stamp() -> Stamp:
    return Stamp(time.strftime("%Y-%m-%dT%H:%M:%S%z"), git_commit(), current_user())


def _guarded(func: F) -> F:
    """SQLite errors of an open history (a lock held past the timeout, a file damaged since
    it was opened) become one line naming the file."""
    @functools.wraps(func)
    def wrapper(conn: sqlite3.Connection, *args: Any, **kwargs: Any) -> Any:
        with _translated(_path_of(conn)):
            return func(conn, *args, **kwargs)
    return wrapper  # type: ignore[return-value]


@_guarded
def append(conn: sqlite3.Connection, target: str, model: str, config_hash: str, summary: dict[str, Any],
           accepted_with_failures: int | None = None, min_id: int = 1, when: Stamp | None = None) -> int:
    """Insert one report in its own transaction; returns its id.

    ``accepted_with_failures``: None, not accepted; a count, accepted as the baseline with
    that many regressions. ``min_id``: the id is at least this (the caller's folders named
    by id may outlive the history). ``when``: the stamp, by default gathered now, before
    the write lock."""
    when = when or stamp()
    accepted = accepted_with_failures is not None
    conn.execute("BEGIN IMMEDIATE")
    try:
        cursor = conn.execute(
            "INSERT INTO runs (id, created, git_commit, target, model, config_hash, summary, accepted, accepted_by, "
            "accepted_at, accepted_with_failures) VALUES (MAX(?, 1 + COALESCE((SELECT seq FROM sqlite_sequence "
            "WHERE name = 'runs'), 0)), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (min_id, when.created, when.git_commit, target, model, config_hash, json.dumps(summary), int(accepted),
             when.user if accepted else None, when.created if accepted else None, accepted_with_failures))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return int(cursor.lastrowid)


@_guarded
def accept(conn: sqlite3.Connection, run_id: int, with_failures: int = 0) -> None:
    """Mark an existing report as accepted, by whom and when."""
    when = stamp()
    conn.execute("UPDATE runs SET accepted = 1, accepted_by = ?, accepted_at = ?, accepted_with_failures = ? "
                 "WHERE id = ?", (when.user, when.created, with_failures, run_id))


@_guarded
def last_id(conn: sqlite3.Connection) -> int:
    """The highest id this history has given (0 for none), deleted rows included."""
    row = conn.execute("SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'runs'), 0), "
                       "COALESCE((SELECT MAX(id) FROM runs), 0))").fetchone()
    return int(row[0])


@_guarded
def get(conn: sqlite3.Connection, run_id: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    return _entry(conn, row) if row else None


@_guarded
def last_accepted(conn: sqlite3.Connection, target: str, model: str, before: int | None = None) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM runs WHERE accepted = 1 AND target = ? AND model = ? AND id < ? "
                       "ORDER BY id DESC LIMIT 1", (target, model, before or 2**62)).fetchone()
    return _entry(conn, row) if row else None


@_guarded
def recent(conn: sqlite3.Connection, target: str, model: str, limit: int = 30) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM runs WHERE target = ? AND model = ? ORDER BY id DESC LIMIT ?",
                        (target, model, limit)).fetchall()
    return [_entry(conn, r) for r in reversed(rows)]


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def current_user() -> str:
    """The login name; in a container without a passwd entry for this uid, the uid."""
    try:
        return getpass.getuser()
    except (KeyError, OSError, ImportError):  # KeyError before Python 3.13, OSError since
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


def _entry(conn: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
    entry = dict(row)
    try:
        entry["summary"] = json.loads(entry["summary"])
    except (TypeError, ValueError):
        raise HistoryError(f"{_path_of(conn)}: report {entry['id']} has a summary that is not JSON; "
                           f"the file was edited or damaged") from None
    return entry


@contextlib.contextmanager
def _translated(path: Path | str) -> Iterator[None]:
    """Turn a SQLite error into a HistoryError naming ``path``."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        raise HistoryError(_describe(path, exc)) from None


def _describe(path: Path | str, exc: BaseException) -> str:
    text = str(exc)
    if "file is not a database" in text:
        return f"{path}: not a SQLite database (garbage or another kind of file); {MOVE_ASIDE}"
    if "malformed" in text or "corrupt" in text:
        return f"{path}: damaged ({text}); restore it from a backup or {MOVE_ASIDE}"
    if "locked" in text or "busy" in text:
        return f"{path}: locked by another process for over 30 s ({text}); try again when it has finished"
    if "unable to open" in text:
        return f"{path}: cannot be opened ({text}); check it is a file you may read and write"
    return f"{path}: cannot be used as the report history ({text})"


def _path_of(conn: sqlite3.Connection) -> str:
    try:
        return str(conn.execute("PRAGMA database_list").fetchone()[2])
    except sqlite3.Error:
        return "the report history"
