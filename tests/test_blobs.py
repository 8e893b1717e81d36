"""Out-of-band payloads: large arguments and results travel through a blob store.

Every store a user can pick: SQLite's, Redis's and MySQL's own (private servers), and a
shared folder (``file://``, here with a SQLite broker). Round trips go through a real
``remoteexec-worker`` process; what waits in the queue is read straight from the broker.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pymysql
import pytest
import redis

from remoteexec import (
    BackendUnavailable,
    Client,
    ConfigurationError,
    PayloadTooLarge,
    SerializationError,
    SignatureError,
    Worker,
    using,
)
from remoteexec.backends import open_backend
from remoteexec.backends.mysql.connection import parse_url
from remoteexec.blobs import MSGPACK, RAW_BYTES, BlobRef, Payloads
from remoteexec.config import resolve
from remoteexec.message import FORMAT_VERSION, Call, Codec
from tests.conftest import fresh_url
from tests.farm import Farm, tasks

pytestmark = pytest.mark.timeout(600)

STORES = ["sqlite", "redis", "mysql", "file"]
MiB = 2**20


class Store:
    """A broker URL and its blob store, with raw access to both (no remoteexec code)."""

    def __init__(self, mode: str, url: str, folder: Path) -> None:
        self.mode, self.url = mode, url
        self.folder = folder if mode == "file" else None
        self.blob_url = f"file://{folder}" if mode == "file" else None

    def settings(self, **options: Any) -> dict[str, Any]:
        return {"blob_url": self.blob_url, **options}

    def _sql(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.url.startswith("sqlite"):
            conn = sqlite3.connect(self.url.removeprefix("sqlite:///"))
            try:
                rows = conn.execute(sql, args).fetchall()
                conn.commit()
                return rows
            finally:
                conn.close()
        connect, _ = parse_url(self.url)
        mysql = pymysql.connect(**connect, autocommit=True)
        try:
            with mysql.cursor() as cur:
                cur.execute(sql.replace("?", "%s").replace("blobs", "remoteexec_blobs"), args)
                return list(cur.fetchall())
        finally:
            mysql.close()

    def _redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def blob_ids(self) -> set[str]:
        """The ids of the blobs stored now."""
        if self.folder is not None:
            return {p.name for p in self.folder.iterdir()}
        if self.mode == "redis":
            return {k.decode().rsplit(":", 1)[1] for k in self._redis().keys("remoteexec:blob:*")}
        try:
            return {str(i) for (i,) in self._sql("SELECT DISTINCT id FROM blobs")}
        except (sqlite3.OperationalError, pymysql.err.ProgrammingError):
            return set()  # no blob table yet

    def alter(self, blob_id: str) -> None:
        """Flip the first byte of a stored blob."""
        if self.folder is not None:
            path = self.folder / blob_id
            data = bytearray(path.read_bytes())
            data[0] ^= 1
            path.write_bytes(data)
        elif self.mode == "redis":
            r = self._redis()
            key = f"remoteexec:blob:{blob_id}"
            first = bytearray(r.hget(key, 0))
            first[0] ^= 1
            r.hset(key, 0, bytes(first))
        else:
            [(first,)] = self._sql("SELECT data FROM blobs WHERE id = ? AND part = 0", (blob_id,))
            changed = bytes([first[0] ^ 1]) + bytes(first[1:])
            self._sql("UPDATE blobs SET data = ? WHERE id = ? AND part = 0", (changed, blob_id))

    def queued_sizes(self) -> list[int]:
        """The size of each task waiting in the broker, as the broker holds it."""
        if self.mode == "redis":
            r = self._redis()
            return [len(t) for k in r.keys("remoteexec:{*}:w") for t in r.lrange(k, 0, -1)]
        table = "tasks" if self.url.startswith("sqlite") else "remoteexec_tasks"
        return [int(n) for (n,) in self._sql(f"SELECT length(body) FROM {table}")]

    def sweep(self) -> None:
        """What a worker's monitor does every minute."""
        backend = open_backend(self.url)
        try:
            backend.sweep()
            Payloads(resolve(self.url, **self.settings()), backend).sweep()
        finally:
            backend.close()


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    mode = str(request.param)
    url = fresh_url("sqlite" if mode == "file" else mode, request, tmp_path)
    folder = tmp_path / "blobs"
    folder.mkdir()
    return Store(mode, url, folder)


@pytest.fixture
def payloads(store: Store) -> Iterator[Payloads]:
    backend = open_backend(store.url)
    yield Payloads(resolve(store.url, **store.settings()), backend)
    backend.close()


def wait_until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# Round trips through a real worker process ---------------------------------------------


def test_ten_mib_arguments_and_results_round_trip_and_only_references_are_queued(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if store.blob_url:
        monkeypatch.setenv("REMOTEEXEC_BLOB_URL", store.blob_url)
    farm = Farm(store.url, tmp_path)
    data, text = os.urandom(10 * MiB), "é€" * 200_000  # str: 1 MB of UTF-8
    packed = {"rows": [[i, str(i)] for i in range(100_000)]}  # ~1 MiB packed
    try:
        with Client(store.url, **store.settings()) as client, using(client):
            futures = [tasks.Echo.value.submit(data), tasks.Echo.both.submit(text, key=packed)]
            sizes = store.queued_sizes()  # no worker yet: the tasks wait in the broker
            assert len(sizes) == 2 and max(sizes) < 1024, sizes
            assert len(store.blob_ids()) == 3  # data, text and packed, stored once each
            farm.start()
            assert futures[0].result(timeout=180) == data
            assert futures[1].result(timeout=180) == [[text], {"key": packed}]
            wait_until(lambda: not store.blob_ids(), 60)  # arguments and results deleted
    finally:
        farm.stop()


def test_an_unread_blob_is_gone_after_its_ttl(store: Store) -> None:
    with Client(store.url, **store.settings(result_ttl=1)) as client, using(client):
        future = tasks.Echo.value.submit(b"y" * MiB)  # no worker: nobody reads it
        assert len(store.blob_ids()) == 1
        time.sleep(1.5)
        store.sweep()
        assert not store.blob_ids()
        client.replies.forget([future])


def test_values_at_or_under_the_threshold_stay_in_band(store: Store) -> None:
    with Client(store.url, **store.settings(blob_threshold=1000)) as client, using(client):
        tasks.Echo.value.submit(b"z" * 990)  # packed: 993 bytes
        tasks.Echo.value.submit("s" * 1000)
        assert not store.blob_ids()
        tasks.Echo.value.submit(b"z" * 1001)
        tasks.Echo.value.submit([b"z" * 600, b"z" * 600])  # packed above it: out of band
        assert len(store.blob_ids()) == 2


# Refused blobs ----------------------------------------------------------------------------


def test_an_altered_blob_is_refused(store: Store, payloads: Payloads) -> None:
    ref = payloads.put(iter([b"a" * MiB]), 60, RAW_BYTES)
    assert payloads.resolve_value(ref) == b"a" * MiB
    store.alter(ref.id)
    with pytest.raises(SerializationError, match="does not match its size and digest"):
        payloads.resolve_value(ref)


def test_a_missing_or_short_blob_is_refused(store: Store, payloads: Payloads) -> None:
    ref = payloads.put(iter([b"a" * 1000]), 60, RAW_BYTES)
    with pytest.raises(SerializationError, match="does not match"):
        payloads.resolve_value(replace(ref, size=999))
    payloads.delete([ref])
    with pytest.raises(SerializationError, match="expired"):
        payloads.resolve_value(ref)


def test_a_reference_is_bounded_by_max_blob_size_before_anything_is_read(
    store: Store, payloads: Payloads
) -> None:
    ref = payloads.put(iter([b"a" * 1000]), 60, RAW_BYTES)
    payloads.max_size = 999
    with pytest.raises(PayloadTooLarge, match="max_blob_size"):
        payloads.resolve_value(ref)
    with pytest.raises(PayloadTooLarge, match="max_blob_size"):  # at the caller, nothing stored
        payloads.put(iter([b"a" * 600, b"a" * 600]), 60, RAW_BYTES)
    assert store.blob_ids() == {ref.id}


def test_a_caller_refuses_a_value_above_max_blob_size_before_storing_anything(
    store: Store,
) -> None:
    with Client(store.url, **store.settings(max_blob_size=MiB)) as client, using(client):
        with pytest.raises(PayloadTooLarge, match="max_blob_size"):
            tasks.Echo.value.submit(b"a" * (MiB + 1))
        with pytest.raises(PayloadTooLarge, match="max_blob_size"):
            tasks.Echo.value.submit([b"a" * MiB])
        assert not store.blob_ids()


def test_with_a_secret_a_swapped_reference_fails_the_signature_and_a_wrong_digest_the_read(
    store: Store, payloads: Payloads
) -> None:
    codec = Codec(secrets=["k"])
    first = payloads.put(iter([b"1" * 1000]), 60, RAW_BYTES)
    second = payloads.put(iter([b"2" * 1000]), 60, RAW_BYTES)
    call = Call("t1", "Echo", "value", (b"1" * 300_000,), {}, None, 3, None, "q", "r", 1.0)
    body, [ref] = payloads.encode_call(codec, call)
    assert codec.decode_call(body).args == (ref,)
    swapped = body.replace(ref.id.encode(), second.id.encode())  # the broker's copy, edited
    assert swapped != body
    with pytest.raises(SignatureError):
        codec.decode_call(swapped)
    # A signed reference naming one blob with the digest of another: the read refuses it.
    forged = replace(first, id=second.id)
    with pytest.raises(SerializationError, match="does not match"):
        payloads.resolve_value(forged)


def test_a_worker_answers_a_call_whose_blob_fails_its_digest_with_serialization_error(
    tmp_path: Path,
) -> None:
    url, secret = f"sqlite:///{tmp_path / 'q.db'}", "s3cret"
    worker = Worker(url, burst=True, secret=secret)
    with Client(url, secret=secret) as client, using(client):
        good = client._payloads.put(iter([b"1" * 1000]), 60, RAW_BYTES)
        other = client._payloads.put(iter([b"2" * 1000]), 60, RAW_BYTES)
        future = tasks.Echo.value.submit(replace(good, sha256=other.sha256))
        worker.run()
        with pytest.raises(SerializationError, match=r"arguments of Echo\.value.*digest"):
            future.result(timeout=10)


# Untrusted references ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        ["backend", "../../etc/passwd", 10, b"\0" * 32, RAW_BYTES],
        ["file", "0" * 31 + "/", 10, b"\0" * 32, RAW_BYTES],
        ["backend", "A" * 32, 10, b"\0" * 32, RAW_BYTES],
        ["backend", "0" * 32, -1, b"\0" * 32, RAW_BYTES],
        ["backend", "0" * 32, 10, b"\0" * 31, RAW_BYTES],
        ["backend", "0" * 32, 10, b"\0" * 32, 7],
        ["s3", "0" * 32, 10, b"\0" * 32, MSGPACK],
        ["backend", "0" * 32, 10.0, b"\0" * 32, RAW_BYTES],
        ["backend", "0" * 32, 10, b"\0" * 32],
    ],
)
def test_a_malformed_reference_is_refused_when_the_message_decodes(fields: list[Any]) -> None:
    ref = msgpack.ExtType(12, msgpack.packb(["remoteexec.blobs.BlobRef", fields]))
    payload = msgpack.packb(["t1", "Echo", "value", [ref], {}, None, 3, None, "q", "r", 1.0])
    with pytest.raises(SerializationError, match="malformed blob reference"):
        Codec().decode_call(msgpack.packb([FORMAT_VERSION, 1, payload, None]))


def test_a_reference_to_another_kind_of_store_is_refused(store: Store, payloads: Payloads) -> None:
    ref = payloads.put(iter([b"a" * 1000]), 60, RAW_BYTES)
    other = "backend" if ref.store == "file" else "file"
    with pytest.raises(SerializationError, match="set the same blob_url"):
        payloads.resolve_value(replace(ref, store=other))


def test_blob_settings_come_from_arguments_environment_and_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert (resolve().blob_threshold, resolve().max_blob_size) == (256 * 1024, 2 * 2**30)
    assert resolve().blob_url is None
    (tmp_path / "remoteexec.yaml").write_text("blob_threshold: 1000\nmax_blob_size: 5000\n")
    assert (resolve().blob_threshold, resolve().max_blob_size) == (1000, 5000)
    monkeypatch.setenv("REMOTEEXEC_BLOB_THRESHOLD", "2000")
    monkeypatch.setenv("REMOTEEXEC_BLOB_URL", f"file://{tmp_path}")
    assert (resolve().blob_threshold, resolve().blob_url) == (2000, f"file://{tmp_path}")
    assert resolve(blob_threshold=3000).blob_threshold == 3000
    for bad in ({"blob_threshold": 0}, {"max_blob_size": "big"}, {"blob_url": "s3://b"}):
        with pytest.raises(ConfigurationError):
            resolve(**bad)
    monkeypatch.setenv("REMOTEEXEC_MAX_BLOB_SIZE", "lots")
    with pytest.raises(ConfigurationError, match="REMOTEEXEC_MAX_BLOB_SIZE"):
        resolve()


def test_a_file_store_needs_an_existing_folder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    with Client(url, blob_url=f"file://{tmp_path}/missing") as client, using(client):
        with pytest.raises(ConfigurationError, match="does not exist"):
            tasks.Echo.value.submit(b"a" * MiB)


def test_a_blob_folder_that_fails_gives_backend_unavailable(tmp_path: Path) -> None:
    folder = tmp_path / "blobs"
    folder.mkdir()
    url = f"sqlite:///{tmp_path / 'q.db'}"
    with Client(url, blob_url=f"file://{folder}") as client, using(client):
        tasks.Echo.value.submit(b"a" * MiB)
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
        with pytest.raises(BackendUnavailable, match="cannot store a blob"):
            tasks.Echo.value.submit(b"a" * MiB)


# MySQL's packet limit ----------------------------------------------------------------------


@pytest.mark.big
def test_mysql_with_a_16_mib_packet_carries_a_200_mib_argument(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server = request.getfixturevalue("mariadb_server")
    conn = server.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT @@global.max_allowed_packet")
        [(packet,)] = cur.fetchall()
        if packet != 16 * MiB:
            cur.execute(f"SET GLOBAL max_allowed_packet = {16 * MiB}")
    conn.close()
    url = fresh_url("mysql", request, tmp_path)
    data = os.urandom(200 * MiB)
    worker = Worker(url, burst=True)
    with Client(url) as client, using(client):
        future = tasks.Echo.digest.submit(data)
        assert client.backend.max_packet == 16 * MiB  # type: ignore[attr-defined]
        worker.run()
        assert future.result(timeout=600) == hashlib.sha256(data).hexdigest()


def test_blob_ref_is_a_frozen_value() -> None:
    ref = BlobRef("backend", "0" * 32, 1, b"\0" * 32, RAW_BYTES)
    with pytest.raises(AttributeError):
        ref.size = 2  # type: ignore[misc]


# 1 GiB: time and peak memory (``-m big``, run apart by scripts/test) ------------------------

CLIENT = """
import hashlib, json, os, sys, time
sys.path.insert(0, sys.argv[3])
from remoteexec import Client, using
from tests.farm import tasks

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith(("VmHWM", "VmRSS")):
            yield int(line.split()[1]) * 1024

blob_url = sys.argv[2] or None
with Client(sys.argv[1], blob_url=blob_url, max_blob_size=2**31) as client, using(client):
    tasks.Echo.value("warm up")
    base = max(hwm())
    data = b"\\xab" * 2**30
    expected = hashlib.sha256(data).digest()
    started = time.perf_counter()
    future = tasks.Echo.value.submit(data)
    sent = time.perf_counter()
    del data  # the caller keeps no copy: what stays is the library's
    result = future.result(timeout=1200)
    done = time.perf_counter()
    assert hashlib.sha256(result).digest() == expected
    print(json.dumps({"base": base, "hwm": max(hwm()), "send": sent - started,
                      "total": done - started}))
"""


def _vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


@pytest.mark.big
@pytest.mark.timeout(1800)
def test_one_gib_argument_and_result_round_trip_under_twice_their_size_in_memory(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import subprocess
    import sys

    monkeypatch.setenv("REMOTEEXEC_MAX_BLOB_SIZE", str(2**31))
    if store.blob_url:
        monkeypatch.setenv("REMOTEEXEC_BLOB_URL", store.blob_url)
    farm = Farm(store.url, tmp_path)
    try:
        farm.start()
        [pid] = farm.worker_pids(1)
        worker_base = _vm(pid, "VmRSS")
        root = str(Path(__file__).resolve().parent.parent)
        out = subprocess.run(
            [sys.executable, "-c", CLIENT, store.url, store.blob_url or "", root],
            capture_output=True, text=True, timeout=1500, cwd=root,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        figures = json.loads(out.stdout.splitlines()[-1])
        worker_peak = _vm(pid, "VmHWM") - worker_base
        client_peak = figures["hwm"] - figures["base"]
        print(
            f"\n1 GiB round trip on {store.mode}: {figures['total']:.1f} s "
            f"(argument stored in {figures['send']:.1f} s); peak memory above idle: "
            f"client {client_peak / 2**30:.2f} GiB, worker {worker_peak / 2**30:.2f} GiB"
        )
        assert client_peak < 2 * 2**30
        assert worker_peak < 2 * 2**30
    finally:
        farm.stop()
