"""``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://``, ``redis+sentinel://``: the
Redis adapter (Redis 7.0 or later).

Why lists and not Streams: a consumer group gives delivery counts and blocking reads over
several queues, but its lease is an entry's idle time judged by the *claimer's*
``min-idle-time`` (not the holder's lease), ``XACK`` does not check which consumer holds the
entry, and a released entry cannot be un-delivered: closing those gaps takes WATCH on hot
stream keys (aborts under load) or Lua. With lists one idea makes every token check free:
**a claim is a list of its own**, ``{q}:c:<token>``, holding the task while (and only while)
that lease is held. Commands that act only on an existing list (``RPUSHX``, ``LMOVE`` out of
it) make each step of ``complete`` conditional on the lease inside one ``MULTI``: a worker
whose lease was taken over changes nothing, in one round trip, with no WATCH and no script,
so a worker's ACL may deny ``@scripting``. Where scripting is allowed, two Lua scripts
(``scripts/``) do the same on the same keys in one command per batch instead of one or two
per task; the round trips are the same either way. A batch that keeps a result under its
task's id goes by ``MULTI``: the kept result moves into its list through the claim list.

Where to look:

* ``adapter``: ``RedisBackend``, what each call sends and what it remembers;
* ``claiming``: the claim passes and when each runs; ``commands``: the commands of each step;
* ``pairing``: ``complete_and_claim``, a completion and the next claim pass in one round trip;
* ``scripts``: the Lua scripts' loader (``scripts/*.lua``);
* ``watch``: ``lost``, ``stats``, ``purge``, heartbeats, dead letters (off the hot path);
* ``keys``: the key layout; ``elements``: the bytes of a task or reply element;
* ``deferred``: deferred tasks and ``Done.again`` (a lease held by no one until then);
* ``connection``: URLs, connecting, error mapping; ``wire``: raw commands on the hot path;
* ``topology``: Redis Cluster and Sentinel; ``shards``: queues spread over several slots.

Keys, under a prefix (``remoteexec:``; ``?prefix=`` in the URL), a queue's all in its
``{queue}`` hash slot: ``{q}:w`` waiting tasks (pushed left, taken right), ``{q}:l`` lease
deadlines by token (and ``keys.SKIPLIST_KEEPER``), ``{q}:c:<token>`` a claimed task,
``{q}:b`` doorbells for workers waiting on several queues (gone 2 s after the last ring),
``{q}:c:~:<id>`` a deferred task, its token scored in ``{q}:l`` at its ``not_before``;
``{reply_to}:r`` a client's replies (TTL ``result_ttl``, refreshed on each push);
``kept:<id>`` the result kept under a task's id (``Done.keep``; a list, its first element
read, with a TTL of ``keep``); ``epoch``, ``queues``, ``workers``, ``dead``.

Round trips: ``enqueue``, ``complete``, ``renew``, ``release`` 1 per batch;
``send_and_wait`` (a blocking call) 1: the enqueue, then ``BLMPOP`` on the reply list.
``claim`` on one queue 1: with work waiting, one ``CLAIM`` script call (or, without scripts,
``ZADD`` the new tokens and one ``LMOVE`` per task); on an empty queue ``BLMOVE`` waiting ->
claim list, so an idle worker waits inside its claim. A lease it saw in the last second
that is due costs 1 non-blocking pass first. On several queues, 1 per queue tried, then
``BLMPOP`` on doorbells. ``complete_and_claim`` (what a worker does between batches) 1, with
or without scripts: the completion is written first, then the next pass. ``replies`` 1
(``BLMPOP ... COUNT``); ``lost`` 1. Requeuing expired leases costs ``claim`` 2 more, only
when one expired. A token reserved by a claim that found no task is dropped by the next.
The hot paths send raw commands on a connection kept per thread (``wire.run``), not
``Pipeline``.

Guarantees and limits:

* ``complete`` and ``renew`` succeed while the claim list exists: a lease that expired but
  was not taken over yet may still complete (its result is then the only one).
* A claim that waited in ``BLMOVE`` is leased for ``lease`` plus that wait (<= 1 s). A
  lease another worker took after this one's last pass and that ran out before this claim
  is seen when that claim's wait ends (<= 1 s), as a lease running out during a wait is.
* ``lost(ids)`` compares epochs: each enqueue runs ``SET epoch <random> NX GET``, and this
  object remembers the epoch of every id it sent until its reply comes back. A Redis that
  came back empty, or was flushed, has a different epoch or none: those ids are lost. The
  others (and ids whose reply came back, which a client may have rejected) are looked for
  in the waiting lists, claim lists and the reply list (``LRANGE``: a check reads every
  waiting task, so its cost grows with the backlog). ``purge`` and ``withdraw`` leave a
  tombstone per id in the ``purged`` sorted set for ``result_ttl``; ``withdraw`` finds its
  ids by reading the waiting lists and leases sets too. Redis must run with
  ``maxmemory-policy noeviction``.
* Nothing is resent automatically (a resent claim would double up a claim list): a driver
  error is ``BackendUnavailable``, and the next call reconnects. ``BLMPOP`` pops replies:
  if Redis dies between popping them and sending them, they are gone.
* Redis Cluster (``redis+cluster://``, ``topology``): a queue's keys share a slot, and the
  scripts touch only keys of the queue's slot when given no reply list; ``complete`` ends
  the leases in the queue's slot, then pushes the replies in their lists' slots
  (``topology.complete_routed``), and ``complete_and_claim`` is those two, then a claim.
  Sharded queues: ``shards``. Sentinel (``redis+sentinel://``) changes only how a
  connection finds the primary.
"""

from __future__ import annotations

from .adapter import RedisBackend

__all__ = ["RedisBackend"]
