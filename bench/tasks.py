"""The benchmark's task type, imported by ``remoteexec-worker --import bench.tasks``."""

from __future__ import annotations

import math

from remoteexec import remote


@remote
class CalculateMultipleOfPi:
    def execute(self, n):
        return math.pi * n


@remote
class Echo:
    def value(self, x):
        return x
