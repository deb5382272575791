"""Report history in SQLite: every report appended with its git commit, target, model and
config hash; one marked accepted is the baseline later reports are compared with.

WAL journal and a busy timeout let two reports write at once; each append is one
transaction, so a process killed mid-write leaves the history as it was before.
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    git_commit TEXT,
    target TEXT NOT NULL,
    model TEXT NOT NULL,
    config_hash TEXT,
    accepted INTEGER NOT NULL DEFAULT 0,
    summary TEXT NOT NULL
)"""


def open_history(path: Path) -> sqlite3.Connection:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute(SCHEMA)
    conn.row_factory = sqlite3.Row
    return conn


def append(conn: sqlite3.Connection, target: str, model: str, config_hash: str, summary: dict[str, Any]) -> int:
    """Insert one report in its own transaction; returns its id."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        cursor = conn.execute(
            "INSERT INTO runs (created, git_commit, target, model, config_hash, summary) VALUES (?, ?, ?, ?, ?, ?)",
            (time.strftime("%Y-%m-%dT%H:%M:%S%z"), git_commit(), target, model, config_hash, json.dumps(summary)))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return int(cursor.lastrowid)


def accept(conn: sqlite3.Connection, run_id: int) -> None:
    conn.execute("UPDATE runs SET accepted = 1 WHERE id = ?", (run_id,))


def get(conn: sqlite3.Connection, run_id: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    return _entry(row) if row else None


def last_accepted(conn: sqlite3.Connection, target: str, model: str, before: int | None = None) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM runs WHERE accepted = 1 AND target = ? AND model = ? AND id < ? "
                       "ORDER BY id DESC LIMIT 1", (target, model, before or 2**62)).fetchone()
    return _entry(row) if row else None


def recent(conn: sqlite3.Connection, target: str, model: str, limit: int = 30) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM runs WHERE target = ? AND model = ? ORDER BY id DESC LIMIT ?",
                        (target, model, limit)).fetchall()
    return [_entry(r) for r in reversed(rows)]


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _entry(row: sqlite3.Row) -> dict[str, Any]:
    entry = dict(row)
    entry["summary"] = json.loads(entry["summary"])
    return entry
