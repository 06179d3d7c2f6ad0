"""The Ray that `qt sweep` and `qt walkforward --ray` run their tasks on: a local one by default, or a cluster."""

import os
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def ray_init_options(cpus: int | None = None, address: str | None = None) -> dict:
    """`ray.init` arguments: a local Ray with `cpus` CPUs and no dashboard, or the cluster at `address`. The
    workers import this checkout's code (the driver's), which must be at the same path on a cluster's nodes."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    options: dict[str, Any] = {
        "log_to_driver": False,
        "runtime_env": {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}},
    }
    if address:
        return options | {"address": address}
    return options | {"num_cpus": cpus or os.cpu_count(), "include_dashboard": False}


def start_ray(cpus: int | None, address: str | None) -> tuple[dict, bool]:
    """Ray for a sweep or walk-forward: the running one if the caller started it, else the cluster at `address`, else a local
    one with `cpus` CPUs. Returns its description and whether this call started it (and the caller must shut it down)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(**ray_init_options(cpus, address))
    mode = "cluster" if address else "local"
    info = {
        "mode": mode if started else "already running",
        "address": address or ray.get_runtime_context().gcs_address,
        "cpus": int(ray.cluster_resources().get("CPU", 0)),
        "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
        "ray_version": ray.__version__,
    }
    return info, started
