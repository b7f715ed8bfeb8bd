"""convnet benchmarks: ``harness`` (timing, tables, JSON) and one script per kernel family.

Each benchmark script defines ``main(argv=None) -> int`` and runs as
``python benchmarks/NAME.py`` or ``python -m benchmarks.NAME``; see README.md.
"""
