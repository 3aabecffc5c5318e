"""Benchmarks for forwardd: the ingest harness (load generator, baseline receiver, driver), micro-benches."""
