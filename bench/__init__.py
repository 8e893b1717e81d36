"""remoteexec's benchmark suite (``python -m bench``); not part of the test suite.

See ``bench/README.md``. This package stays import-light: worker processes import
``bench.tasks`` or ``bench.raw_redis`` alone, so their peak memory is not inflated.
"""
