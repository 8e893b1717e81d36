"""Raw MySQL/MariaDB baselines, client side (the workers are in ``raw_workers``).

One ``tasks`` table (id, state, lock_version, arg, result; an index on (state, id)).
The client INSERTs a row per call (``executemany``, 500 rows per INSERT, for a batch)
and polls every millisecond for finished rows, which it reads and DELETEs.

* ``raw-mysql``: a worker claims one row per transaction with
  ``SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1``, computes, UPDATEs the row with the
  result and commits; it sleeps 1 ms when no row is waiting.
* ``raw-mysql-seed``: the seed's design. A worker polls for an unstarted row (1 ms
  sleeps), claims it with ``UPDATE ... WHERE id = ? AND lock_version = ?`` (a claim
  counts only when one row changed) and writes the result with a second UPDATE.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgpack

from .servers import RawWorkers, drop_database, new_database

pack = msgpack.packb
unpack = msgpack.unpackb
CHUNK = 500  # rows per INSERT on the batch client
WAIT = 30.0  # seconds without a result before the bench calls the run broken
POLL = 0.001

SCHEMA = """
CREATE TABLE tasks (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    state TINYINT NOT NULL DEFAULT 0,
    lock_version INT NOT NULL DEFAULT 0,
    arg BLOB NOT NULL,
    result BLOB NULL,
    KEY state_id (state, id)
) ENGINE=InnoDB
"""


class RawMySQL:
    """A minimal PyMySQL task loop; ``mode`` is ``skip`` (SKIP LOCKED) or ``seed``."""

    def __init__(self, server: Any, folder: Path, mode: str = "skip") -> None:
        self.server = server
        self.folder = folder
        self.mode = mode
        self.name = "raw-mysql" if mode == "skip" else "raw-mysql-seed"
        self.scenarios = "ABCD"
        self.db = f"raw_{mode}"
        self.workers: RawWorkers | None = None
        self.conn: Any = None

    def start(self, processes: int) -> list[int]:
        new_database(self.server, self.db)
        self.conn = self.server.connect(database=self.db)
        with self.conn.cursor() as cur:
            cur.execute(SCHEMA)
        self.workers = RawWorkers(
            f"mysql-{self.mode}", self.folder, processes, port=str(self.server.port), db=self.db
        )
        return self.workers.pids

    def stop(self) -> None:
        if self.workers is not None:
            self.workers.stop()
            self.workers = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
            drop_database(self.server, self.db)

    def call(self, n: int) -> float:
        cur = self.conn.cursor()
        cur.execute("INSERT INTO tasks (arg) VALUES (%s)", (pack(n),))
        task_id = cur.lastrowid
        deadline = time.monotonic() + WAIT
        while True:
            cur.execute("SELECT result FROM tasks WHERE id = %s AND state = 2", (task_id,))
            row = cur.fetchone()
            if row is not None:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no result within {WAIT:g} s")
            time.sleep(POLL)
        cur.execute("DELETE FROM tasks WHERE id = %s", (task_id,))
        return unpack(row[0])[1]  # type: ignore[no-any-return]

    def run_many(self, ns: range) -> list[float]:
        cur = self.conn.cursor()
        total = len(ns)
        for start in range(0, total, CHUNK):
            rows = [(pack(ns[i]),) for i in range(start, min(start + CHUNK, total))]
            cur.executemany("INSERT INTO tasks (arg) VALUES (%s)", rows)
        out: list[Any] = [None] * total
        got, last = 0, time.monotonic()
        while got < total:
            cur.execute("SELECT id, result FROM tasks WHERE state = 2 LIMIT 1000")
            rows = cur.fetchall()
            if not rows:
                if time.monotonic() - last > WAIT:
                    raise RuntimeError(f"{self.name}: no result within {WAIT:g} s")
                time.sleep(POLL)
                continue
            ids = ",".join(str(row[0]) for row in rows)
            cur.execute(f"DELETE FROM tasks WHERE id IN ({ids})")
            for _, body in rows:
                n, value = unpack(body)
                out[ns.index(n)] = value  # O(1) on a range
            got, last = got + len(rows), time.monotonic()
        return out
