"""The seed's task types, as a worker would load them:

    remoteexec-worker --tasks-dir demo --queues demo

(`remoteexec demo` runs the same classes from ``remoteexec.demo``.) The seed's third
example, ``LocalExec``, ran shell commands from the message: remoteexec leaves it out on
purpose, since nothing from a message should ever be executed.
"""

from remoteexec.demo import CalculateMultipleOfPi, WhatMachineIsThis

__all__ = ["CalculateMultipleOfPi", "WhatMachineIsThis"]
