"""The seed's client.rb: keep asking for random multiples of pi.

remoteexec-worker --tasks-dir demo --queues demo &
python demo/client.py [URL]
"""

import random
import sys
import time

import remoteexec
from remoteexec.demo import CalculateMultipleOfPi, WhatMachineIsThis


def main() -> None:
    remoteexec.configure(sys.argv[1] if len(sys.argv) > 1 else None)
    print("served by", WhatMachineIsThis.execute())
    while True:
        n = random.randint(1, 1000)
        stamp = time.strftime("%a %b %d %H:%M:%S %z %Y")
        print(f"[{stamp}] Submitted: CalculateMultipleOfPi.execute({n})")
        print(f"[{stamp}] Received:  {CalculateMultipleOfPi.execute(n)}")


if __name__ == "__main__":
    main()
