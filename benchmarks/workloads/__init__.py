"""One module per framework: its tasks, configured from BENCH_* env vars, and `make_adapter()`."""
