"""The DICOM node's durable job table: SQLite in the store folder (WAL, one writer process).

Tables:
  instances(sop_uid PK, study_uid, series_uid, sop_class, path, sha256, received_at)
  jobs(job_id PK, study_uid, state, ...)  with state one of
    received  instances are arriving; due when none arrived for `idle` seconds
    running   claimed by the worker (a crash leaves it here; the next start puts it back to received)
    stored    SR + SC written to results/<job_id>/, waiting to be sent (retries with back-off)
    sent      delivered to the destination (terminal)
    failed    with a one-line reason (terminal)
At most one `received` job per study (a partial unique index): instances of a study that arrive while its job is
running, or after it finished, open a new job for the updated study. An instance received again with the same bytes
is a duplicate and changes nothing, so a sender retrying an unacknowledged C-STORE never causes a second result.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATES = ("received", "running", "stored", "sent", "failed")
DB_NAME = "jobs.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances(
  sop_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL, sop_class TEXT NOT NULL,
  path TEXT NOT NULL, sha256 TEXT NOT NULL, received_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS jobs(
  job_id INTEGER PRIMARY KEY AUTOINCREMENT, study_uid TEXT NOT NULL, state TEXT NOT NULL,
  created_at REAL NOT NULL, updated_at REAL NOT NULL, last_instance_at REAL NOT NULL,
  instances INTEGER NOT NULL DEFAULT 0, runs INTEGER NOT NULL DEFAULT 0,
  started_at REAL, stored_at REAL, sent_at REAL,
  send_attempts INTEGER NOT NULL DEFAULT 0, next_send_at REAL,
  case_id TEXT, probability REAL, decision TEXT, sr_path TEXT, sc_path TEXT, sr_uid TEXT, sc_uid TEXT,
  reason TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_open ON jobs(study_uid) WHERE state = 'received';
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
"""


@dataclass(frozen=True)
class Job:
    job_id: int
    study_uid: str
    state: str
    last_instance_at: float
    instances: int
    runs: int
    send_attempts: int
    sr_path: str | None
    sc_path: str | None
    case_id: str | None
    reason: str | None


class JobStore:
    """Thread-safe access to the job table (one connection, one lock: the writes are tiny)."""

    def __init__(self, store: str | os.PathLike[str], readonly: bool = False) -> None:
        self.path = Path(store) / DB_NAME
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"no job table in {store} ({DB_NAME} not found)")
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a committed state survives power loss, not just kill -9
            self._db.executescript(_SCHEMA)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ------------------------------------------------------------------ receiving

    def known_instance(self, sop_uid: str, sha256: str) -> bool:
        """True when this exact instance (same UID, same bytes) is already stored."""
        with self._lock:
            row = self._db.execute("SELECT sha256 FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchone()
        return row is not None and row["sha256"] == sha256

    def add_instance(self, sop_uid: str, study_uid: str, series_uid: str, sop_class: str, path: str,
                     sha256: str, now: float | None = None) -> int:
        """Record an instance (file already on disk) and attach it to the study's open job; returns the job id."""
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (sop_uid, study_uid, series_uid, sop_class, path, sha256, now))
            row = db.execute("SELECT job_id FROM jobs WHERE study_uid = ? AND state = 'received'",
                             (study_uid,)).fetchone()
            n = db.execute("SELECT COUNT(*) FROM instances WHERE study_uid = ?", (study_uid,)).fetchone()[0]
            if row is None:
                cur = db.execute("INSERT INTO jobs(study_uid, state, created_at, updated_at, last_instance_at, "
                                 "instances) VALUES (?, 'received', ?, ?, ?, ?)", (study_uid, now, now, now, n))
                return int(cur.lastrowid or 0)
            db.execute("UPDATE jobs SET last_instance_at = ?, updated_at = ?, instances = ? WHERE job_id = ?",
                       (now, now, n, row["job_id"]))
            return int(row["job_id"])

    def instance_paths(self, study_uid: str) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT path FROM instances WHERE study_uid = ? ORDER BY path",
                                    (study_uid,)).fetchall()
        return [r["path"] for r in rows]

    # ------------------------------------------------------------------ processing

    def recover(self, max_runs: int) -> list[tuple[int, str]]:
        """After a crash: running jobs go back to received (or fail once they have crashed the node max_runs
        times). Returns [(job_id, new state)]."""
        now = time.time()
        out = []
        with self._tx() as db:
            for r in db.execute("SELECT job_id, study_uid, runs FROM jobs WHERE state = 'running'").fetchall():
                if r["runs"] >= max_runs:
                    db.execute("UPDATE jobs SET state = 'failed', updated_at = ?, reason = ? WHERE job_id = ?",
                               (now, f"interrupted {r['runs']} times while running (node crashed or was killed)",
                                r["job_id"]))
                    out.append((r["job_id"], "failed"))
                    continue
                # A newer open job for the same study already holds everything: this one is superseded.
                other = db.execute("SELECT job_id FROM jobs WHERE study_uid = ? AND state = 'received'",
                                   (r["study_uid"],)).fetchone()
                if other is not None:
                    db.execute("UPDATE jobs SET state = 'failed', updated_at = ?, reason = ? WHERE job_id = ?",
                               (now, f"superseded by job {other['job_id']} (more instances arrived)", r["job_id"]))
                    out.append((r["job_id"], "failed"))
                else:
                    db.execute("UPDATE jobs SET state = 'received', updated_at = ? WHERE job_id = ?",
                               (now, r["job_id"]))
                    out.append((r["job_id"], "received"))
        return out

    def claim_due(self, idle_s: float, busy: set[str] | frozenset[str] = frozenset(),
                  now: float | None = None) -> Job | None:
        """The oldest received job with no instance for idle_s seconds and whose study is not in `busy` (still
        being sent on an open association), moved to running (runs + 1), or None."""
        now = time.time() if now is None else now
        skip = sorted(busy)
        cond = f" AND study_uid NOT IN ({', '.join('?' * len(skip))})" if skip else ""
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE state = 'received' AND last_instance_at <= ?" + cond
                             + " ORDER BY last_instance_at LIMIT 1", (now - idle_s, *skip)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', runs = runs + 1, started_at = ?, updated_at = ? "
                       "WHERE job_id = ?", (now, now, row["job_id"]))
        return self.get(int(row["job_id"]))

    def mark_stored(self, job_id: int, case_id: str, probability: float, decision: str, sr_path: str,
                    sc_path: str, sr_uid: str, sc_uid: str, to_send: bool) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE jobs SET state = ?, stored_at = ?, updated_at = ?, next_send_at = ?, case_id = ?, "
                       "probability = ?, decision = ?, sr_path = ?, sc_path = ?, sr_uid = ?, sc_uid = ?, "
                       "reason = NULL WHERE job_id = ? AND state = 'running'",
                       ("stored" if to_send else "sent", now, now, now, case_id, probability, decision, sr_path,
                        sc_path, sr_uid, sc_uid, job_id))

    def mark_failed(self, job_id: int, reason: str) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE jobs SET state = 'failed', updated_at = ?, reason = ? WHERE job_id = ?",
                       (now, reason[:500], job_id))

    # ------------------------------------------------------------------ sending

    def due_for_sending(self, now: float | None = None) -> Job | None:
        now = time.time() if now is None else now
        with self._lock:
            row = self._db.execute("SELECT job_id FROM jobs WHERE state = 'stored' AND next_send_at <= ? "
                                   "ORDER BY next_send_at LIMIT 1", (now,)).fetchone()
        return None if row is None else self.get(int(row["job_id"]))

    def mark_sent(self, job_id: int) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE jobs SET state = 'sent', sent_at = ?, updated_at = ?, "
                       "send_attempts = send_attempts + 1, reason = NULL WHERE job_id = ? AND state = 'stored'",
                       (now, now, job_id))

    def send_failed(self, job_id: int, reason: str, retry_in: float | None) -> None:
        """A failed delivery: retry after retry_in seconds, or (None) give up and mark the job failed."""
        now = time.time()
        with self._tx() as db:
            if retry_in is None:
                db.execute("UPDATE jobs SET state = 'failed', updated_at = ?, send_attempts = send_attempts + 1, "
                           "reason = ? WHERE job_id = ?", (now, reason[:500], job_id))
            else:
                db.execute("UPDATE jobs SET updated_at = ?, send_attempts = send_attempts + 1, next_send_at = ?, "
                           "reason = ? WHERE job_id = ?", (now, now + retry_in, reason[:500], job_id))

    # ------------------------------------------------------------------ reading

    def get(self, job_id: int) -> Job:
        with self._lock:
            r = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return Job(int(r["job_id"]), r["study_uid"], r["state"], float(r["last_instance_at"]), int(r["instances"]),
                   int(r["runs"]), int(r["send_attempts"]), r["sr_path"], r["sc_path"], r["case_id"], r["reason"])

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._db.execute("SELECT * FROM jobs ORDER BY job_id").fetchall()]


def format_table(rows: list[dict[str, Any]]) -> str:
    """The job table as fixed-width text (for --status)."""
    def ts(x: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(x)) if x else "-"

    head = ["job", "state", "case", "study", "inst", "runs", "sends", "probability", "decision", "updated",
            "reason"]
    lines = [head]
    for r in rows:
        lines.append([str(r["job_id"]), r["state"], r["case_id"] or "-", r["study_uid"], str(r["instances"]),
                      str(r["runs"]), str(r["send_attempts"]),
                      "-" if r["probability"] is None else f"{r['probability']:.6f}", r["decision"] or "-",
                      ts(r["updated_at"]), (r["reason"] or "").replace("\n", " ")])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
                     for row in lines)
