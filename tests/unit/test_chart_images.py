"""Static checks of images/*/Dockerfile: they cannot be built on this machine (no container
engine), so what can drift from the rest of the project is checked here instead."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
IMAGES = {name: REPO / "images" / name / "Dockerfile" for name in ("operator", "runtime")}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    ins = instructions(path)
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


def arg_default(path: Path, name: str) -> str:
    for word, rest in instructions(path):
        if word == "ARG" and rest.startswith(f"{name}="):
            return rest.split("=", 1)[1]
    raise AssertionError(f"{path}: no ARG {name}=<default>")


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_base_image_is_pinned_slim_python_matching_requires_python(image: str) -> None:
    base = arg_default(IMAGES[image], "PYTHON_IMAGE")
    m = re.fullmatch(r"python:(\d+\.\d+)-slim-bookworm(@sha256:[0-9a-f]{64})?", base)
    assert m, f"{image}: base {base!r} is not a pinned python:X.Y-slim-bookworm"
    minimum = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, m.group(1).split("."))) >= tuple(map(int, minimum.split(".")))
    froms = [rest for word, rest in instructions(IMAGES[image]) if word == "FROM"]
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms), froms


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_final_stage_runs_as_numeric_non_root_user(image: str) -> None:
    users = [rest for word, rest in final_stage(IMAGES[image]) if word == "USER"]
    assert users, f"{image}: final stage sets no USER (it would run as root)"
    m = re.fullmatch(r"(\d+):(\d+)", users[-1])
    assert m, f"{image}: USER {users[-1]!r} is not numeric uid:gid (runAsNonRoot needs numeric)"
    assert int(m.group(1)) != 0 and int(m.group(2)) != 0


def test_chart_default_security_context_matches_the_image_user() -> None:
    values = yaml.safe_load((REPO / "charts" / "modelfleet" / "values.yaml").read_text())
    users = {rest for word, rest in final_stage(IMAGES["operator"]) if word == "USER"}
    psc = values["operator"]["podSecurityContext"]
    assert users == {f"{psc['runAsUser']}:{psc['runAsGroup']}"}


@pytest.mark.parametrize(("image", "extra"), [("operator", "operator"), ("runtime", "runtime")])
def test_image_installs_only_its_extra_and_runs_its_entry_point(image: str, extra: str) -> None:
    ins = instructions(IMAGES[image])
    installs = [rest for word, rest in ins if word == "RUN" and "pip install" in rest]
    project_installs = [i for i in installs if '"." ' in i or '".[' in i or " ." in i]
    assert project_installs == [i for i in installs if f'".[{extra}]"' in i], installs
    assert project_installs, f"{image}: does not install the project with the {extra} extra"
    entry = [rest for word, rest in final_stage(IMAGES[image]) if word == "ENTRYPOINT"]
    script = re.findall(r'"([^"]+)"', entry[-1])[0]
    assert script in PYPROJECT["project"]["scripts"], f"{image}: unknown entry point {script}"


def test_operator_image_has_no_torch() -> None:
    commands = " ".join(rest for _, rest in instructions(IMAGES["operator"]))
    assert "torch" not in commands.lower()
    assert "torch" not in " ".join(PYPROJECT["project"]["optional-dependencies"]["operator"])


def test_runtime_torch_version_matches_the_tested_torch() -> None:
    pinned = arg_default(IMAGES["runtime"], "TORCH_VERSION")
    tested = importlib.metadata.version("torch").split("+")[0]
    assert pinned == tested, (
        f"images/runtime/Dockerfile pins torch {pinned} but the tests run torch {tested}"
    )
    assert arg_default(IMAGES["runtime"], "TORCH_INDEX_URL").startswith("https://")


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerignore_lets_every_copied_path_through(image: str) -> None:
    ignore = (IMAGES[image].parent / "Dockerfile.dockerignore").read_text().splitlines()
    rules = [r.strip() for r in ignore if r.strip() and not r.startswith("#")]

    def included(path: str) -> bool:
        keep = True
        for r in rules:
            neg = r.startswith("!")
            pat = r.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
                keep = neg
        return keep

    for word, rest in instructions(IMAGES[image]):
        if word == "COPY" and "--from=" not in rest:
            for src in rest.split()[:-1]:
                assert (REPO / src).exists(), f"{image}: COPY {src} does not exist"
                assert included(src.rstrip("/")), f"{image}: {src} is excluded by .dockerignore"


def test_runtime_image_default_command_is_accepted_by_the_runtime_cli() -> None:
    from modelfleet_runtime.cli import build_parser  # noqa: PLC0415 (the runtime's own parser)

    entry = [rest for word, rest in final_stage(IMAGES["runtime"]) if word == "ENTRYPOINT"]
    cmd = [rest for word, rest in final_stage(IMAGES["runtime"]) if word == "CMD"]
    assert re.findall(r'"([^"]+)"', entry[-1]) == ["modelfleet-runtime"]
    args = build_parser().parse_args(re.findall(r'"([^"]+)"', cmd[-1]))
    assert args.command == "serve"
    assert str(args.model_dir) == "/models"


def distributions_imported_by(imports: str) -> set[str]:
    """The installed distributions whose modules a fresh interpreter holds after ``imports``."""
    code = (
        "import json, sys, importlib.metadata as md\n"
        + imports
        + "dists = md.packages_distributions()\n"
        "top = {n.split('.')[0] for n in sys.modules}\n"
        "print(json.dumps(sorted({d for n in top for d in dists.get(n, [])})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return {d.lower().replace("_", "-") for d in json.loads(out)}


def declared_only_outside(extra: str) -> set[str]:
    """Distributions that other extras declare but ``extra`` and the base dependencies do not."""
    extras = PYPROJECT["project"]["optional-dependencies"]

    def names(reqs: list[str]) -> set[str]:
        return {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}

    others = [req for name, reqs in extras.items() if name != extra for req in reqs]
    return names(others) - names(extras[extra] + PYPROJECT["project"]["dependencies"])


def test_operator_code_runs_on_the_operator_extra_alone() -> None:
    """The operator image installs `.[operator]` only: nothing the operator imports may come
    from the runtime or dev extras (torch, numpy, test clients). Checked in a fresh process."""
    used = distributions_imported_by(
        "import modelfleet_operator.__main__, modelfleet_operator.handlers\n"
        "import modelfleet_operator.reconcile, modelfleet_operator.kube\n"
    )
    only_elsewhere = declared_only_outside("operator")
    assert "torch" in only_elsewhere
    assert not used & only_elsewhere, f"the operator imports {sorted(used & only_elsewhere)}"
    assert {"kopf", "kubernetes"} <= used


def test_runtime_code_runs_on_the_runtime_extra_alone() -> None:
    """The runtime image installs `.[runtime]` only: every module of the runtime, imported in a
    fresh process, may use nothing that only the operator or dev extras declare (safetensors
    was once imported at load while declared for dev only: every runtime pod crashed)."""
    used = distributions_imported_by(
        "import pkgutil, importlib, modelfleet_runtime\n"
        "for m in pkgutil.walk_packages(modelfleet_runtime.__path__, 'modelfleet_runtime.'):\n"
        "    importlib.import_module(m.name)\n"
    )
    only_elsewhere = declared_only_outside("runtime")
    assert "kopf" in only_elsewhere
    assert not used & only_elsewhere, f"the runtime imports {sorted(used & only_elsewhere)}"
    assert {"torch", "safetensors"} <= used
