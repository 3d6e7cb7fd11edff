"""How to start each server: command, environment and the URL its infer answers on.

Parity rules every recipe follows: one model worker/replica, torch threads = MFBENCH_THREADS,
the same TorchScript file and the same OIP JSON body; access logs off; loopback only.
"""

from __future__ import annotations

import dataclasses
import sysconfig
from pathlib import Path

from envs import PEERS_DIR, python_of, venv_dir


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    batching: bool  # has an in-process dynamic batcher we can set to 8 / 5 ms
    note: str

    def infer_path(self, model: str) -> str:
        if self.name == "torchserve":
            return f"/predictions/{model}"
        return f"/v2/models/{model}/infer"

    def command(
        self, model_dir: Path, port: int, batch: int, delay_ms: float, work: Path
    ) -> list[str]:
        py = str(python_of(self.name))
        here = PEERS_DIR / self.name
        md = str(model_dir)
        if self.name == "modelfleet":
            return [
                py,
                "-m",
                "modelfleet_runtime",
                "serve",
                "--model-dir",
                md,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--max-batch-size",
                str(batch),
                "--max-batch-delay-ms",
                str(delay_ms),
                "--threads",
                "1",
                "--log-level",
                "warning",
            ]
        if self.name in ("fastapi", "kserve"):
            return [py, str(here / "server.py"), "--model-dir", md, "--port", str(port)]
        if self.name in ("litserve", "rayserve", "pytriton"):
            return [
                py,
                str(here / "server.py"),
                "--model-dir",
                md,
                "--port",
                str(port),
                "--batch",
                str(batch),
                "--delay-ms",
                str(delay_ms),
            ]
        if self.name == "bentoml":
            return [
                str(venv_dir("bentoml") / "bin/bentoml"),
                "serve",
                "service:Infer",
                "--working-dir",
                str(here),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ]
        if self.name == "torchserve":
            return [
                "bash",
                str(here / "start.sh"),
                str(venv_dir("torchserve")),
                md,
                str(port),
                str(batch),
                str(int(delay_ms)),
                str(work),
            ]
        raise KeyError(self.name)

    def env(self, model_dir: Path, batch: int, delay_ms: float) -> dict[str, str]:
        env = {
            "PYTHONPATH": str(PEERS_DIR),  # workers in other processes import mfbench_common too
            "MFBENCH_MODEL_DIR": str(model_dir),
            "MFBENCH_BATCH": str(batch),
            "MFBENCH_DELAY_MS": str(delay_ms),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            "BENTOML_DO_NOT_TRACK": "true",
            "PYTHONWARNINGS": "ignore::FutureWarning",
        }
        if self.name == "pytriton":
            # Triton's python-backend stub links libpython3.11 by soname; without this it finds
            # Debian's 3.11.2 under pyenv's 3.11.7 stdlib and dies on RLock._recursion_count.
            env["LD_LIBRARY_PATH"] = str(sysconfig.get_config_var("LIBDIR"))
        return env


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("modelfleet", True, "this project: OIP v2, dynamic batcher"),
        Recipe(
            "fastapi",
            False,
            "floor: FastAPI+uvicorn, json.loads, forward in threadpool; no batcher",
        ),
        Recipe(
            "kserve",
            False,
            "KServe ModelServer, custom Model; batching is a separate sidecar, not in-process",
        ),
        Recipe("litserve", True, "LitServe LitAPI, 1 worker, 1 API server"),
        Recipe(
            "torchserve", True, "TorchServe 0.12 custom handler, 1 worker, batchSize/maxBatchDelay"
        ),
        Recipe("pytriton", True, "Triton 2.51 via PyTriton, @batch + DynamicBatcher"),
        Recipe("rayserve", True, "Ray Serve, 1 replica, @serve.batch"),
        Recipe(
            "bentoml",
            True,
            "BentoML 1.4, 1 worker, adaptive batching (max_latency_ms is an SLO, not a delay)",
        ),
    )
}
