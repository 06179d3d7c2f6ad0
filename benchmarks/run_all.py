"""Runs every benchmark in turn and prints their figures (`make bench`)."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

for script in ["bench_ingest.py", "bench_features.py", "bench_backtest.py", "bench_ml.py", "bench_peers.py"]:
    print(f"== {script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script)], cwd=HERE, check=False)
