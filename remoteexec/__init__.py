"""remoteexec: run Python code on a farm of worker machines as if it were a local call.

from remoteexec import remote

@remote
class CalculateMultipleOfPi:
    def execute(self, n):
        return math.pi * n

CalculateMultipleOfPi.execute(42)   # runs on whichever worker picks it up
"""

from .client import Client, configure, result, status, using
from .errors import (
    BackendUnavailable,
    CallLost,
    CallPurged,
    CallTimeout,
    ConfigurationError,
    PayloadTooLarge,
    RemoteError,
    RemoteExecError,
    ResultExpired,
    SerializationError,
    SignatureError,
    TimeLimitExceeded,
    UnknownTask,
    WorkerLost,
)
from .message import register_type
from .proxy import RemoteClass, RemoteFuture, RemoteMethod, proxy
from .remote import remote, remote_method
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable",
    "CallLost",
    "CallPurged",
    "CallTimeout",
    "Client",
    "ConfigurationError",
    "PayloadTooLarge",
    "RemoteClass",
    "RemoteError",
    "RemoteExecError",
    "RemoteFuture",
    "RemoteMethod",
    "ResultExpired",
    "SerializationError",
    "SignatureError",
    "TimeLimitExceeded",
    "UnknownTask",
    "Worker",
    "WorkerLost",
    "__version__",
    "configure",
    "proxy",
    "register_type",
    "remote",
    "remote_method",
    "result",
    "status",
    "using",
]
