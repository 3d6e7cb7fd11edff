"""Per-peer virtualenvs that share the project's torch instead of downloading it again.

Torch and its CUDA wheels are several GB. One "torchbase" folder holds symlinks to the
project venv's torch closure; each peer venv gets a ``.pth`` file pointing at it, so pip sees
torch as installed (``constraints.txt`` pins it) and never fetches another copy. pip refuses to
uninstall anything outside the peer venv, so a peer can never damage the project venv.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import subprocess
import sys
from pathlib import Path

PEERS_DIR = Path(__file__).resolve().parent
REPO = PEERS_DIR.parents[1]
CACHE = Path(os.environ.get("MODELFLEET_BENCH_CACHE", Path.home() / ".cache/modelfleet/bench"))
PROJECT_VENV = REPO / ".venv"

# torch's install closure (torch 2.15 requires these, cuda-toolkit with extras included).
TORCH_CLOSURE = [
    "torch",
    "torch-*",
    "torchgen",
    "functorch",
    "triton",
    "triton-*",
    "nvidia",
    "nvidia_*",
    "cuda",
    "cuda_*",
    "sympy",
    "sympy-*",
    "isympy.py",
    "mpmath",
    "mpmath-*",
    "networkx",
    "networkx-*",
    "filelock",
    "filelock-*",
    "jinja2",
    "jinja2-*",
    "markupsafe",
    "markupsafe-*",
    "fsspec",
    "fsspec-*",
    "typing_extensions.py",
    "typing_extensions-*",
]

PEERS = ["kserve", "litserve", "torchserve", "pytriton", "rayserve", "bentoml", "fastapi"]


def project_site_packages() -> Path:
    found = sorted((PROJECT_VENV / "lib").glob("python3*/site-packages"))
    if not found:
        raise SystemExit(f"no project venv at {PROJECT_VENV}: run `make dev` or `make test` first")
    return found[0]


def torchbase() -> Path:
    """Symlink farm of the project venv's torch closure (rebuilt when missing)."""
    base = CACHE / "torchbase"
    marker = base / ".complete"
    if marker.exists():
        return base
    base.mkdir(parents=True, exist_ok=True)
    site = project_site_packages()
    for entry in site.iterdir():
        if any(fnmatch.fnmatch(entry.name, pat) for pat in TORCH_CLOSURE):
            link = base / entry.name
            if not link.exists():
                link.symlink_to(entry)
    marker.write_text(str(site))
    return base


def venv_dir(peer: str) -> Path:
    return CACHE / "venvs" / peer


def python_of(peer: str) -> Path:
    if peer == "modelfleet":
        return PROJECT_VENV / "bin/python"
    return venv_dir(peer) / "bin/python"


def _req_hash(peer: str) -> str:
    h = hashlib.sha256()
    for f in (PEERS_DIR / peer / "requirements.txt", PEERS_DIR / "constraints.txt"):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def ensure_env(peer: str, log: Path | None = None) -> Path:
    """Create (or reuse) the peer's venv; returns its python. Idempotent, keyed by requirements."""
    if peer == "modelfleet":
        return python_of(peer)
    vdir = venv_dir(peer)
    stamp = vdir / ".requirements-sha"
    want = _req_hash(peer)
    if stamp.exists() and stamp.read_text() == want:
        return python_of(peer)
    base = torchbase()
    out = open(log, "ab") if log else None  # noqa: SIM115 (closed in finally; None = inherit)
    try:
        if not (vdir / "bin/python").exists():
            # The project's interpreter, so the linked torch's ABI matches.
            base_py = Path(os.path.realpath(PROJECT_VENV / "bin/python"))
            subprocess.run(
                [str(base_py), "-m", "venv", str(vdir)], check=True, stdout=out, stderr=out
            )
        site = sorted((vdir / "lib").glob("python3*/site-packages"))[0]
        (site / "zz_modelfleet_torchbase.pth").write_text(f"{base}\n")
        pip = [str(vdir / "bin/python"), "-m", "pip", "install", "--disable-pip-version-check"]
        subprocess.run(
            [
                *pip,
                "-r",
                str(PEERS_DIR / peer / "requirements.txt"),
                "-c",
                str(PEERS_DIR / "constraints.txt"),
            ],
            check=True,
            stdout=out,
            stderr=out,
        )
        freeze = subprocess.run(
            [str(vdir / "bin/python"), "-m", "pip", "freeze"],
            capture_output=True,
            text=True,
            check=False,
        )
        (vdir / "freeze.txt").write_text(freeze.stdout)
        check = subprocess.run(
            [str(vdir / "bin/python"), "-c", "import torch; print(torch.__file__)"],
            capture_output=True,
            check=False,
            text=True,
        )
        if check.returncode != 0 or str(base) not in check.stdout:
            raise RuntimeError(
                f"{peer}: venv does not use the shared torch: {check.stdout}{check.stderr}"
            )
    finally:
        if out:
            out.close()
    stamp.write_text(want)
    return python_of(peer)


if __name__ == "__main__":
    for name in sys.argv[1:] or PEERS:
        print(name, ensure_env(name, CACHE / "logs" / f"setup-{name}.log"), flush=True)
