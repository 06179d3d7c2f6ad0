"""Helpers of benchmarks/bench_peers.py: the bare Nautilus run and freqtrade as a peer."""
