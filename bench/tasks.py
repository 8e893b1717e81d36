"""The benchmark's task type, imported by ``remoteexec-worker --import bench.tasks``."""

from __future__ import annotations

import math
import time

from remoteexec import remote


@remote
class CalculateMultipleOfPi:
    def execute(self, n):
        return math.pi * n


@remote
class Echo:
    def value(self, x):
        return x


@remote
class Sleepy:
    def execute(self, n):
        """1 ms of waiting (I/O, not CPU), then the usual result."""
        time.sleep(0.001)
        return math.pi * n
