"""``mysql://user:pass@host:port/db``: MySQL 5.7+, 8.x and MariaDB, through PyMySQL.

    adapter.py     MySQLBackend: the contract, the claim and wait modes, reading replies
    claim.py       which tasks a claim takes, and how (``skip_locked`` or ``optimistic``)
    complete.py    a completion: replies stored and tasks deleted in one transaction
    statements.py  every SQL statement
    schema.py      tables, versions, migrations (``remoteexec init-db``)
    connection.py  URL options, TLS, connections per thread, error mapping, retries
    wait.py        waiting for rows: in the server (MariaDB) or by polling
    watch.py       heartbeats, dead letters, starts, stats, purge, sweep

Tables are created on first use (or ahead of time by ``remoteexec init-db``). All times
come from the server's clock, so machines with skewed clocks agree on leases. Claims run
in one of two modes, picked from the server's version unless the URL says
(``?claim=...``).

Guarantees: a task is held by at most one live token; a completion stores the replies and
deletes the tasks its tokens still hold, in one transaction; reads always see committed
data (autocommit, READ COMMITTED); a reply is deleted by the read after the one that
returned it, so a read cut off on its way back loses nothing (a blocking call deletes the
replies it read in the transaction that inserts its next task: one commit for both).
Statements are batched into multi-statement round trips (one, where packet size allows).
Every PyMySQL error becomes ``BackendUnavailable``; deadlocks and lock-wait timeouts are
retried. A claim or reply read that finds nothing waits in the server where it can
(MariaDB), else polls.

URL options: ``claim``, ``wait`` (``server`` or ``client``: where an empty claim or reply
read waits; ``server`` needs MariaDB, and is its default with ``skip_locked`` claims),
``ssl`` (``true`` verifies the certificate and host name), ``ssl_ca``, ``ssl_cert``,
``ssl_key``, ``ssl_key_password``, ``ssl_verify_mode``, ``ssl_check_hostname`` (see
``connection``), ``connect_timeout``, ``read_timeout``, ``write_timeout``, ``unix_socket``.
"""

from __future__ import annotations

from .adapter import MySQLBackend
from .connection import map_mysql_errors
from .schema import schema_sql

__all__ = ["MySQLBackend", "map_mysql_errors", "schema_sql"]
