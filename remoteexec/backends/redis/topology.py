"""``redis+cluster://`` and ``redis+sentinel://``: connecting beyond one Redis.

``redis+cluster://host:port[,host:port...]/?options`` opens a redis-py ``RedisCluster``
(node discovery, ``MOVED``/``ASK`` on its own commands); ``redis+sentinel://host:port
[,host:port...]/service[/db]?options`` asks the Sentinels for ``service``'s primary on
every new connection (``Sentinel.master_for``), so a failover is followed by reconnecting.

The hot paths send raw commands on kept connections (``wire``). On a cluster they go
through ``ClusterLink``: each command is sent to the primary serving its key's slot, a
batch to several nodes in one round trip (written to each, then read in order). A reply
saying the slot is served elsewhere (``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``), or
a node that cannot be reached, refreshes the slot map and fails the call as a connection
error: nothing is resent (the design's rule), and the next call goes to the new primary.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoPermissionError, RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel as _Sentinel

from ...config import MAX_SHARDS
from ...errors import BackendUnavailable, ConfigurationError
from ..base import Done
from .commands import complete_batch, complete_calls, completed
from .elements import pack_reply
from .keys import Keys
from .lua import Scripts
from .shards import base, inward, shown
from .wire import DURABLE_WAIT, Link, pack, primary, replicated, reply, run

# redis-py annotates Sentinel from 8.2 on; seen as a plain callable, it type-checks on all.
Sentinel: Callable[..., Any] = _Sentinel

SCHEMES = ("redis+cluster", "redis+sentinel")
#: Options of both schemes that go to redis-py for the data nodes.
_OPTIONS = (
    *("username", "password", "client_name", "health_check_interval"),
    *("socket_timeout", "socket_connect_timeout", "socket_keepalive"),
)
_FLOATS = ("health_check_interval", "socket_timeout", "socket_connect_timeout")
_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")
#: The adapter's own options on these schemes (handled by ``RedisBackend``).
OWN_OPTIONS = ("shards", "durable")
#: Replies of a node that does not serve the slot (now): the command did not run.
_ELSEWHERE = (b"MOVED", b"ASK", b"TRYAGAIN", b"CLUSTERDOWN", b"MASTERDOWN", b"LOADING")


def _hosts(netloc: str) -> list[tuple[str, int]]:
    hosts = []
    for part in netloc.rpartition("@")[2].split(","):
        host, _, port = part.strip().rpartition(":")
        try:
            hosts.append((host.strip("[]") or "127.0.0.1", int(port or 6379)))
        except ValueError:
            raise ConfigurationError(f"invalid host:port {part!r:.80} in a Redis URL") from None
    return hosts


def _options(url: str, allowed: Sequence[str]) -> dict[str, Any]:
    parts = urlsplit(url)
    out: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in allowed:
            raise ConfigurationError(
                f"unknown Redis URL option {key!r:.60} for {parts.scheme}://; "
                f"known options: prefix, {', '.join((*allowed, *OWN_OPTIONS))}"
            )
        try:
            out[key] = float(value) if key in _FLOATS else value
        except ValueError:
            raise ConfigurationError(f"Redis URL option {key}={value!r:.40} is no number") from None
    if "socket_keepalive" in out:
        out["socket_keepalive"] = out["socket_keepalive"].lower() in ("1", "true", "yes")
    # Credentials in the userinfo part count as options; ``?password=`` wins.
    head = parts.netloc.rpartition("@")[0]
    if head:
        user, _, password = head.partition(":")
        out.setdefault("username", unquote(user) or None)
        out.setdefault("password", unquote(password) or None)
    return {k: v for k, v in out.items() if v is not None}


#: The first redis-py whose cluster pipelines run transactions (MULTI/EXEC in one slot).
CLUSTER_REDIS_PY = (6, 1)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def connect(url: str, *, socket_timeout: float) -> redis.Redis | RedisCluster:
    """A client for a ``redis+cluster://`` or ``redis+sentinel://`` URL (adapter options
    already removed) that never resends a command.

    Raises:
        ConfigurationError: the URL or one of its options is invalid.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    common: dict[str, Any] = {
        "decode_responses": False,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 5.0,
        "retry": Retry(NoBackoff(), 0),
    }
    if scheme == "redis+cluster":
        if _version(redis.__version__) < CLUSTER_REDIS_PY:
            raise ConfigurationError(
                f"redis+cluster:// needs redis-py {'.'.join(map(str, CLUSTER_REDIS_PY))} or newer "
                f"(transactions in cluster pipelines); this is {redis.__version__}"
            )
        options = _options(url, _OPTIONS)
        nodes = [ClusterNode(h, p) for h, p in _hosts(parts.netloc)]  # type: ignore[no-untyped-call]
        try:  # the slot map is read here, from the first node that answers
            return RedisCluster(startup_nodes=nodes, **{**common, **options})
        except (RedisClusterException, redis.RedisError) as exc:
            raise BackendUnavailable(f"Redis Cluster: {type(exc).__name__}: {exc}") from None
    options = _options(url, (*_OPTIONS, *_SENTINEL_OPTIONS))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ConfigurationError("a redis+sentinel:// URL names a service: .../service[/db]")
    try:
        db = int(path[1]) if len(path) == 2 else 0
    except ValueError:
        raise ConfigurationError(f"invalid Redis database {path[1]!r:.20}") from None
    to_sentinels = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}
    for key in _SENTINEL_OPTIONS:
        if key in options:
            to_sentinels[key.removeprefix("sentinel_")] = options.pop(key)
    sentinel = Sentinel(_hosts(parts.netloc), sentinel_kwargs=to_sentinels)
    primary: redis.Redis = sentinel.master_for(unquote(path[0]), db=db, **{**common, **options})
    return primary


class ClusterLink(Link):
    """Per thread and per primary, one kept connection; commands routed by their key."""

    routed = True

    def __init__(self, client: RedisCluster) -> None:
        self._cluster = client
        self._links: dict[str, tuple[Any, Link]] = {}  # node name -> (pool, link)
        self._lock = threading.Lock()
        self._stale = False

    def _link(self, node: ClusterNode) -> Link:
        pool = node.redis_connection.connection_pool
        known = self._links.get(node.name)
        if known is None or known[0] is not pool:
            with self._lock:
                known = self._links[node.name] = (pool, Link(node.redis_connection))
                known[1].durable = self.durable
        return known[1]

    def _refresh(self) -> None:
        if self._stale:
            with self._lock:
                if self._stale:
                    self._stale = False
                    self._cluster.nodes_manager.initialize()

    def primaries(self) -> list[Link]:
        self._refresh()
        return [self._link(n) for n in self._cluster.get_primaries()]  # type: ignore[no-untyped-call]

    def for_key(self, key: Any) -> Link:
        """The link to the primary serving ``key``'s slot."""
        self._refresh()
        key = key if isinstance(key, bytes) else str(key).encode()
        node = self._cluster.get_node_from_key(key)  # type: ignore[no-untyped-call]
        return self._link(node)

    def run_routed(self, commands: list[tuple[Any, ...]], **how: Any) -> list[Any]:
        """``wire.run`` over the cluster (``multi``: every key in one slot)."""
        multi: bool = how["multi"]
        raise_errors: bool = how["raise_errors"]
        then: Callable[[], list[tuple[Any, ...]]] | None = how["then"]
        if multi or (commands and all(c[0] == "SCRIPT" for c in commands)):
            return self._checked(self._whole(commands, multi), raise_errors)
        sent: list[tuple[Any, Any]] = []  # per command: (its link's held connection, mark)
        holding: dict[int, Any] = {}  # per link, its connection for this whole round trip
        try:
            self._send(commands, sent, holding)
            if then is not None:
                self._send(then(), sent, holding)
            if self.durable:  # one WAIT per node written to, after its commands
                for held in {id(h): h for h, _ in sent}.values():
                    held.conn.send_packed_command(pack(held.conn, [DURABLE_WAIT]))
                    sent.append((held, DURABLE_WAIT))
            out = self._read(sent)
        except BaseException as exc:
            for held, _ in sent:
                held.conn.disconnect()
                held.broken = True
            if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
                self._stale = True
            raise
        return self._checked(out, raise_errors)

    def _whole(self, commands: list[tuple[Any, ...]], multi: bool) -> list[Any]:
        """A ``MULTI`` on its slot's primary, or keyless commands (``SCRIPT``) on all."""
        targets = [self.for_key(key_of(commands))] if multi else self.primaries()
        try:
            outs = [run(t, commands, multi=multi, raise_errors=False) for t in targets]
            return outs[0]
        except (redis.ConnectionError, redis.TimeoutError):
            self._stale = True
            raise
        except redis.ResponseError as exc:  # EXECABORT: a command was refused, none ran
            self._stale = True
            raise redis.ConnectionError(f"Redis Cluster: {exc}; slot map refreshed") from None

    @staticmethod
    def _read(sent: list[tuple[Any, Any]]) -> list[Any]:
        out: list[Any] = []
        try:
            for held, mark in sent:
                if mark is None:
                    out.append(reply(held.conn))
                else:
                    replicated(reply(held.conn))
                held.used = time.monotonic()
        except BaseException as exc:
            if isinstance(exc, redis.RedisError):
                exc.replies = out  # type: ignore[attr-defined]
            raise
        primary(out)
        return out

    def _send(
        self, commands: list[tuple[Any, ...]], sent: list[tuple[Any, Any]], holding: dict[int, Any]
    ) -> None:
        """Send ``commands``, one batch per node, noting each in ``sent``. A link's
        connection is taken once per round trip (``holding``): taken again, the replies
        already waiting on it would pass for the data of a closing server."""
        batches: dict[int, tuple[Any, list[tuple[Any, ...]]]] = {}
        for command in commands:
            link = self.for_key(key_of([command]))
            held = holding.get(id(link))
            if held is None:
                held = holding[id(link)] = link.held()
            batches.setdefault(id(held), (held, []))[1].append(command)
            sent.append((held, None))
        for held, batch in batches.values():
            held.conn.send_packed_command(pack(held.conn, batch))

    def _checked(self, out: list[Any], raise_errors: bool) -> list[Any]:
        for i, answer in enumerate(out):
            if isinstance(answer, redis.ResponseError) and str(answer).encode().startswith(
                _ELSEWHERE
            ):
                self._stale = True
                error = redis.ConnectionError(f"Redis Cluster: {answer}; slot map refreshed")
                error.replies = out[:i]  # type: ignore[attr-defined]
                raise error
            if raise_errors and isinstance(answer, redis.ResponseError):
                raise answer
        return out


def key_of(commands: Sequence[tuple[Any, ...]]) -> Any:
    """The key a command (or the first keyed command of a ``MULTI`` body) acts on."""
    for command in commands:
        name = str(command[0]).upper()
        if name in ("MULTI", "EXEC"):
            continue
        if name == "BLMPOP":
            return command[3]
        if name == "LMPOP":
            return command[2]
        if name in ("EVALSHA", "EVAL"):
            return command[3]
        return command[1]
    raise ValueError("no keyed command")


def split_own(url: str) -> tuple[str, int, bool]:
    """``url`` without the adapter's own options (``?shards=``, ``?durable=``), and their
    values (1 shard, not durable, if absent).

    Raises:
        ConfigurationError: an invalid value, or the option on a scheme without it.
    """
    head, _, query = url.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    own = {k: v for k, v in pairs if k in OWN_OPTIONS}
    rest = urlencode([(k, v) for k, v in pairs if k not in OWN_OPTIONS])
    scheme = urlsplit(url).scheme.lower()
    try:
        shards = int(own.get("shards", "1"))
    except ValueError:
        shards = 0
    if not 1 <= shards <= MAX_SHARDS:
        raise ConfigurationError(f"?shards= takes 1 to {MAX_SHARDS}, not {own['shards']!r:.20}")
    if shards > 1 and scheme != "redis+cluster":
        raise ConfigurationError("?shards= needs a redis+cluster:// URL")
    durable = own.get("durable", "0").lower()
    if durable not in ("0", "1", "true", "false", "yes", "no"):
        raise ConfigurationError(f"?durable= takes 0 or 1, not {durable!r:.20}")
    if own and scheme not in SCHEMES:
        raise ConfigurationError(
            "?shards= and ?durable= need redis+cluster:// or redis+sentinel://"
        )
    return head + ("?" + rest if rest else ""), shards, durable in ("1", "true", "yes")


def complete_routed(
    keys: Keys, link: Link, scripts: Scripts, done: Sequence[Done], ttl: int, *, push: bool = True
) -> tuple[list[bool], list[tuple[Any, ...]]]:
    """``complete`` on a cluster: end each lease in its queue's slot (the ``COMPLETE``
    script, or one ``MULTI`` per queue, which also puts tasks back), then push the replies
    of the leases that were still held, one ``RPUSH`` per reply list (and per kept result),
    in its own slot. Returns which leases were held, and (with ``push=False``, unsent) the
    pushes."""
    claims = inward([d.claim for d in done])
    done = [Done(c, d.reply, d.keep, d.again) for c, d in zip(claims, done, strict=True)]
    acks = [Done(d.claim, None, again=d.again) for d in done]
    held: list[bool] = []
    if scripts.shas(link) is not None and all(d.again is None for d in done):
        with contextlib.suppress(NoPermissionError):  # then scripts are off
            held = completed(acks, scripts.run(link, complete_calls(keys, acks, ttl=ttl)))
    if not held:
        by_queue: dict[str, list[int]] = {}
        for i, d in enumerate(acks):
            by_queue.setdefault(d.claim.queue, []).append(i)
        flags: dict[int, bool] = {}
        for indices in by_queue.values():
            cmds, marks = complete_batch(keys, [acks[i] for i in indices], ttl=ttl)
            out = run(link, cmds, multi=True)
            flags.update((i, m >= 0 and out[m] > 0) for i, m in zip(indices, marks, strict=True))
        held = [flags[i] for i in range(len(acks))]
    boxes: dict[str, list[bytes]] = {}
    pushes: list[tuple[Any, ...]] = []
    for d, ok in zip(done, held, strict=True):
        if ok and d.reply is not None and d.claim.reply_to:
            box = keys.replies(d.claim.reply_to)
            boxes.setdefault(box, []).append(pack_reply(d.claim.id, d.reply))
        if ok and d.reply is not None and d.keep:  # kept under the id, in its own slot
            kept = keys.kept(d.claim.id)
            pushes += [("RPUSH", kept, d.reply), ("PEXPIRE", kept, max(1, int(d.keep * 1000)))]
    for box, elems in boxes.items():
        pushes += [("RPUSH", box, *elems), ("PEXPIRE", box, ttl)]
    if pushes and push:
        run(link, pushes)
    return held, pushes


def spread_of(
    depths: dict[str, int], keys: Keys, cluster: Any
) -> tuple[dict[str, int], dict[str, int]]:
    """Waiting tasks per shard (``depths``) as totals per queue, and per shard and node."""
    totals: dict[str, int] = {}
    parts: dict[str, int] = {}
    for name, depth in depths.items():
        totals[base(name)] = totals.get(base(name), 0) + depth
        parts[f"shard {shown(name)}"] = depth
        node = cluster.get_node_from_key(keys.waiting(name))
        parts[f"node {node.name}"] = parts.get(f"node {node.name}", 0) + depth
    return totals, parts


def spread_oldest(oldest: dict[str, float]) -> dict[str, float]:
    """The oldest waiting task's time per shard (``oldest``) as the oldest per queue, and
    per shard under the names ``spread_of`` gives the shards."""
    spread: dict[str, float] = {}
    for name, at in oldest.items():
        spread[base(name)] = min(at, spread.get(base(name), at))
        spread[f"shard {shown(name)}"] = at
    return spread
