"""Beyond one Redis: a 3-primary Redis Cluster (sharded queues, a primary killed) and a
primary watched by Sentinels (a failover), with real worker processes.

The end-to-end tests of ``test_e2e`` run here too, on a cluster and through Sentinel
(``farm_url`` is overridden for this module). The contract suite covers both modes in
``test_contract``.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from remoteexec import Client, RemoteExecError, using
from remoteexec.backends import open_backend
from remoteexec.backends.base import Job
from remoteexec.errors import BackendUnavailable, ConfigurationError
from remoteexec.monitor import format_status
from tests._redis_cluster import RedisClusterSet, SentinelSet
from tests.conftest import _need, fresh_url
from tests.farm import Farm, tasks
from tests.test_e2e import (  # noqa: F401  (run here on a cluster and through Sentinel)
    client,
    test_calls_look_local_across_processes,
    test_killed_worker_task_completes_elsewhere_once,
    test_remote_errors_unknown_tasks_many_submits_and_map,
    test_sigterm_finishes_running_task_and_hands_back_the_rest,
    test_sigterm_while_a_worker_claims_ahead_stops_it_and_loses_no_call,
    test_task_that_always_kills_its_worker_ends_as_worker_lost,
    test_timeout_without_workers_and_expired_tasks_are_not_run,
)

pytestmark = pytest.mark.timeout(300)

LEASE = 2.0


@pytest.fixture(params=["redis_cluster", "redis_sentinel"])
def farm_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return fresh_url(str(request.param), request, tmp_path)


@pytest.fixture
def cluster_farm(redis_cluster: Any, tmp_path: Path) -> Iterator[Farm]:
    redis_cluster.flushall()
    farm = Farm(redis_cluster.url, tmp_path)
    yield farm
    farm.stop()


@pytest.fixture
def replicated_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterSet]:
    """Three primaries with a replica each, for one test that kills a primary."""
    _need("redis-server")
    _need("redis-cli")
    with RedisClusterSet(tmp_path_factory.mktemp("failover"), replicas=1) as cluster:
        yield cluster


@pytest.fixture
def own_sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """A Sentinel set for one test that kills its primary."""
    _need("redis-server")
    with SentinelSet(tmp_path_factory.mktemp("sentinel-failover")) as sentinels:
        yield sentinels


def _shard_parts(stats: Any) -> tuple[dict[str, int], dict[str, int]]:
    shards = {k: v for k, v in stats.parts.items() if k.startswith("shard ")}
    nodes = {k: v for k, v in stats.parts.items() if k.startswith("node ")}
    return shards, nodes


def test_a_queue_with_six_shards_spreads_20000_calls_over_three_primaries(
    cluster_farm: Farm, redis_cluster: Any
) -> None:
    url = redis_cluster.url + "?shards=6"
    with Client(url) as rx, using(rx):
        futures = [tasks.CalculateMultipleOfPi.execute.submit(i) for i in range(20_000)]
        stats = rx.backend.stats()  # no worker yet: every task waits in its shard
        shards, nodes = _shard_parts(stats)
        assert len(shards) == 6 and sum(shards.values()) == 20_000, shards
        mean = 20_000 / 6
        assert all(abs(n - mean) <= 0.25 * mean for n in shards.values()), shards
        assert len(nodes) == 3 and all(n > 0 for n in nodes.values()), nodes
        assert sum(stats.queues.values()) == 20_000  # the total, per queue
        assert set(stats.oldest) == set(stats.queues) | set(shards)  # per queue and shard
        assert stats.oldest["default"] == min(stats.oldest[s] for s in shards)
        assert "node 127.0.0.1:" in format_status(stats)
        # Workers without the option follow the queue's stored shard count.
        cluster_farm.start(processes=2)
        cluster_farm.start(processes=2)
        assert [f.result(timeout=240) for f in futures] == [math.pi * i for i in range(20_000)]


def test_withdraw_finds_waiting_and_deferred_tasks_on_every_shard(redis_cluster: Any) -> None:
    redis_cluster.flushall()
    backend = open_backend(redis_cluster.url + "?shards=4")
    try:
        jobs = [Job(uuid.uuid4().hex, "default", "r", b"x") for _ in range(8)]
        later = [Job(uuid.uuid4().hex, "default", "r", b"x", time.time() + 60) for _ in range(4)]
        backend.enqueue(jobs + later)
        shards, _ = _shard_parts(backend.stats())
        assert len(shards) == 4 and sum(shards.values()) == 12, shards
        ids = [j.id for j in jobs + later]
        assert backend.withdraw([*ids, "unknown"]) == ids
        assert backend.purged(ids) == set(ids)
        assert sum(backend.stats().queues.values()) == 0
    finally:
        backend.close()


def test_a_task_type_with_shards_spreads_its_queue_without_a_url_option(
    cluster_farm: Farm, redis_cluster: Any
) -> None:
    with Client(redis_cluster.url) as rx, using(rx):  # no ?shards= on either side
        futures = [tasks.ShardedPi.execute.submit(i) for i in range(600)]
        shards, nodes = _shard_parts(rx.backend.stats())
        assert len(shards) == 6 and sum(shards.values()) == 600, shards
        assert len(nodes) == 3, nodes
        cluster_farm.start("--queues", "sharded")
        assert [f.result(timeout=60) for f in futures] == [math.pi * i for i in range(600)]


def test_a_worker_started_first_serves_every_shard_of_its_task_types_queue(
    cluster_farm: Farm, redis_cluster: Any
) -> None:
    # The worker declares the shards of the task types it imports: it claims from all
    # six even though no client had used the queue when it started.
    cluster_farm.start("--queues", "sharded")
    cluster_farm.worker_pids(1)
    with Client(redis_cluster.url) as rx, using(rx):
        got = [tasks.ShardedPi.execute.options(timeout=30)(i) for i in range(24)]
    assert got == [math.pi * i for i in range(24)]


def test_calls_whose_replies_share_a_node_with_their_queue_never_stall(
    cluster_farm: Farm, redis_cluster: RedisClusterSet
) -> None:
    # A worker sends a result's reply (its client's slot) and its next claim pass (its
    # queue's slot) in one round trip. Where both slots live on one node, both go down
    # one connection, which must not be taken for a closing one (replies waiting on it)
    # between the two: its replies were lost and the round trip read the wrong ones.
    import redis as redis_py

    with Client(redis_cluster.url, timeout=10) as caller, using(caller):
        node = redis_cluster.nodes[0]
        cluster = redis_py.RedisCluster(host="127.0.0.1", port=node.port)
        try:
            box = cluster.get_node_from_key(f"remoteexec:{{{caller.reply_to}}}:r").name
            queue = next(
                q
                for q in (f"q{i}" for i in range(1000))
                if cluster.get_node_from_key(f"remoteexec:{{{q}}}:w").name == box
            )
        finally:
            cluster.close()
        cluster_farm.start("--queues", queue, lease=30)
        call = tasks.CalculateMultipleOfPi.execute.options(queue=queue, timeout=10)
        for i in range(300):
            assert call(i) == math.pi * i


def test_work_that_all_lands_on_one_shard_is_served_by_both_workers(
    cluster_farm: Farm, redis_cluster: Any
) -> None:
    url = redis_cluster.url + "?shards=6"
    with Client(url) as rx, using(rx):
        futures = [tasks.Slow.execute.submit(0.2) for _ in range(24)]
        _gather_into_one_shard(redis_cluster, rx)
        shards, _ = _shard_parts(rx.backend.stats())
        assert sorted(shards.values()) == [0, 0, 0, 0, 0, 24], shards
        cluster_farm.start()
        cluster_farm.start()
        pids = {f.result(timeout=60) for f in futures}
        assert len(pids) == 2, pids


def _gather_into_one_shard(cluster: Any, rx: Client) -> None:
    """Move every waiting task of the default queue into its last shard."""
    from redis.cluster import ClusterNode, RedisCluster

    backend: Any = rx.backend
    keys, names = backend._keys, backend._shards.of(rx.settings.queue)
    r = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", cluster.nodes[0].port)])
    try:
        target = keys.waiting(names[-1])
        for name in names[:-1]:
            elems = r.lrange(keys.waiting(name), 0, -1)
            if elems:
                r.rpush(target, *elems)  # they stay oldest first
                r.delete(keys.waiting(name))
    finally:
        r.close()


def _calls_through_a_failover(url: str, farm: Farm, kill: Any) -> None:
    """Calls keep going while ``kill()`` takes a primary down: each ends in its result or
    a typed error within the lease + 10 s of the kill, and calls after it succeed, with
    no client or worker restarted."""
    try:
        _through_a_failover(url, farm, kill)
    finally:
        farm.stop()


def _through_a_failover(url: str, farm: Farm, kill: Any) -> None:
    farm.start(lease=LEASE)
    farm.start(lease=LEASE)
    pids = farm.worker_pids(2)
    outcomes: list[tuple[str, float, float]] = []  # (result or error, started, ended)
    stop = threading.Event()
    with Client(url, timeout=30) as rx, using(rx):
        assert tasks.Slow.execute(0.01) in pids  # both workers are up and serving

        def call_loop() -> None:
            with using(rx):  # a context variable: set in this thread too
                calls()

        def calls() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    futures = [tasks.Slow.execute.submit(0.01) for _ in range(5)]
                except RemoteExecError as exc:
                    outcomes.append((type(exc).__name__, started, time.monotonic()))
                    time.sleep(0.1)
                    continue
                for f in futures:
                    try:
                        f.result(timeout=LEASE + 10 + 20)
                        outcomes.append(("ok", started, time.monotonic()))
                    except RemoteExecError as exc:
                        outcomes.append((type(exc).__name__, started, time.monotonic()))

        caller = threading.Thread(target=call_loop, daemon=True)
        caller.start()
        time.sleep(2.0)
        assert outcomes and all(o[0] == "ok" for o in outcomes), (outcomes, farm.logs())
        killed = time.monotonic()
        kill()
        # Calls go on until they succeed again after the kill (the failover is over).
        deadline = killed + 90
        while not any(o[0] == "ok" and o[1] > killed for o in outcomes):
            assert time.monotonic() < deadline, (outcomes[-20:], farm.logs())
            time.sleep(0.2)
        stop.set()
        caller.join(timeout=LEASE + 40)
        assert not caller.is_alive(), "a call hung"
        # Every call ended, within the lease + 10 s of the kill or of its start if later.
        late = [o for o in outcomes if o[2] - max(o[1], killed) > LEASE + 10]
        assert not late, late
        # The same client and workers serve on.
        assert tasks.Slow.execute(0.01) in pids
    assert farm.worker_pids(2) == pids


def test_calls_survive_a_cluster_primary_killed_mid_run(
    replicated_cluster: RedisClusterSet, tmp_path: Path
) -> None:
    url = replicated_cluster.url + "?shards=3"
    victim = _primary_of(replicated_cluster, "{default}")
    _calls_through_a_failover(url, Farm(url, tmp_path), victim.kill)


def test_calls_survive_a_sentinel_failover(own_sentinels: SentinelSet, tmp_path: Path) -> None:
    _calls_through_a_failover(
        own_sentinels.url, Farm(own_sentinels.url, tmp_path), own_sentinels.primary().kill
    )


def _primary_of(cluster: RedisClusterSet, tag: str) -> Any:
    from redis.crc import key_slot

    slot = key_slot(tag.encode())
    for node in cluster.primaries():
        c = node.client()
        try:
            for start, end, *_ in c.execute_command("CLUSTER", "SLOTS"):
                owner = _[0]
                if start <= slot <= end and int(owner[1]) == node.port:
                    return node
        finally:
            c.close()
    raise AssertionError(f"no primary serves {tag}")


def test_with_durable_a_failover_under_load_loses_no_acknowledged_enqueue(
    replicated_cluster: RedisClusterSet,
) -> None:
    url = replicated_cluster.url + "?durable=1"
    victim = _primary_of(replicated_cluster, "{default}")
    backend = open_backend(url)
    acked: list[str] = []
    failed = 0
    try:
        deadline = None
        while deadline is None or time.monotonic() < deadline:
            batch = [Job(uuid.uuid4().hex, "default", "me", b"x") for _ in range(20)]
            try:
                backend.enqueue(batch)
                acked += [j.id for j in batch]
            except BackendUnavailable:
                failed += 1
                time.sleep(0.05)
            if deadline is None and len(acked) >= 2000:
                victim.kill()
                deadline = time.monotonic() + 8.0
    finally:
        backend.close()
    # The new primary has no replica left: durable writes fail until one joins; read
    # without the option.
    reader = open_backend(replicated_cluster.url)
    found: set[str] = set()
    try:
        while claims := reader.claim(["default"], limit=1000, lease=60, wait=0.5):
            found.update(c.id for c in claims)
    finally:
        reader.close()
    assert failed > 0  # the kill was seen
    missing = set(acked) - found
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged enqueues lost"


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:1/0?shards=2",
        "redis+sentinel://127.0.0.1:1/?shards=2",
        "redis+cluster://127.0.0.1:1/?shards=0",
        "redis+cluster://127.0.0.1:1/?durable=maybe",
        "redis+cluster://127.0.0.1:1/?no_such_option=1",
        "redis+sentinel://127.0.0.1:1/",
    ],
)
def test_invalid_cluster_and_sentinel_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        open_backend(url)


def test_a_cluster_url_on_a_redis_py_without_cluster_transactions_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import redis

    from remoteexec.backends.redis import topology

    monkeypatch.setattr(redis, "__version__", "5.0.8")
    with pytest.raises(ConfigurationError, match=r"needs redis-py 6\.1 or newer .* 5\.0\.8"):
        topology.connect("redis+cluster://127.0.0.1:1/", socket_timeout=1.0)


@pytest.mark.parametrize("shards", [0, 65, "6", 2.0])
def test_remote_refuses_a_shard_count_out_of_range(shards: Any) -> None:
    from remoteexec import remote

    with pytest.raises(ConfigurationError, match="shards takes 1 to 64"):
        remote(shards=shards)
