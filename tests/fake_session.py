"""`qt live` in a subprocess against the local fake exchange (live/fake_exchange/), stepped bar by bar by the test.

The node's output goes to a file (a pipe nobody reads would fill up and block the node).
"""

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from live.fake_exchange.server import FakeBinance

ROOT = Path(__file__).resolve().parents[1]
KEYS = {
    "BINANCE_FUTURES_TESTNET_API_KEY": "SENTINELKEYxq7",
    "BINANCE_FUTURES_TESTNET_API_SECRET": "SENTINELSECxq7",
    "QT_ADMIN_TOKEN": "SENTINELTOKENq9z",  # the control API's admin token (actors/control_api.py)
}


class Session:
    def __init__(self, fake, node: subprocess.Popen, log: Path):
        self.fake = fake
        self.node = node
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, what: str, timeout: float = 60) -> None:
        """Until `what` appears in the node's output; fails if the node exits first or time runs out."""
        deadline = time.monotonic() + timeout
        while what not in self.output():
            assert self.node.poll() is None, (
                f"the node exited ({self.node.returncode}):\n{self.output()[-3000:]}"
            )
            assert time.monotonic() < deadline, f"no {what!r} after {timeout} s:\n{self.output()[-3000:]}"
            time.sleep(0.1)

    def wait_until(self, condition, what: str, timeout: float = 15) -> dict:
        """Until `condition(fake state)` holds; returns that state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.fake.state()
            if condition(state):
                return state
            assert self.node.poll() is None, f"the node exited:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"{what}: not within {timeout} s:\n{self.output()[-3000:]}"
            time.sleep(0.1)

    def step(self, bars: int = 1, pause: float = 0.3) -> None:
        """Close `bars` bars at the fake, one at a time, giving the node `pause` seconds after each."""
        for _ in range(bars):
            self.fake.step()
            time.sleep(pause)

    def stop(self, timeout: float = 60) -> int:
        """SIGINT (a graceful stop, with the flatten when configured); returns the exit code."""
        self.node.send_signal(signal.SIGINT)
        return self.node.wait(timeout=timeout)


@contextmanager
def live_session(
    tmp_path: Path, catalog: Path, symbols: list[str], start, config: dict, behind_bars: int = 0
):
    """The fake replaying `catalog` from `start` (stepped) and `qt live` running `config` against it."""
    fake_venue = FakeBinance(catalog, symbols, start=start, behind_bars=behind_bars)
    with fake_venue.start_in_thread() as fake:
        config = config | {"endpoints": {"http": fake.fake.http_url, "ws": fake.fake.ws_url}}
        path = tmp_path / f"{config.get('name', 'live')}.yaml"
        path.write_text(yaml.safe_dump(config))
        log = tmp_path / "node.out"
        env = os.environ | KEYS | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        with log.open("w") as out:
            node = subprocess.Popen(
                [sys.executable, "-m", "quantum_trader.cli", "live", str(path), "--duration", "600"],
                stdout=out, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
            )  # fmt: skip
        try:
            yield Session(fake, node, log)
        finally:
            if node.poll() is None:
                node.kill()
                node.wait()
