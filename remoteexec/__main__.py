"""``python -m remoteexec``: the same as the ``remoteexec`` command."""

from .cli import main

main()
