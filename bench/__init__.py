"""Benchmarks: each module here with a ``main()`` measures one thing and writes ``results/<name>.json``."""
