"""The built binaries report real versions, and Helm can install a chart into the cluster."""

from __future__ import annotations

import json
import pathlib
import subprocess

from kube_harness import HACK_DIR, KubeCluster


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (HACK_DIR / "versions.env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def test_server_and_kubectl_report_the_pinned_version(kube_cluster: KubeCluster) -> None:
    want = _versions()["KUBERNETES_VERSION"]
    info = json.loads(kube_cluster.kubectl("version", "-o", "json").stdout)
    assert info["clientVersion"]["gitVersion"] == want
    assert info["serverVersion"]["gitVersion"] == want
    assert info["serverVersion"]["minor"] == want.split(".")[1]


def test_helm_reports_its_version_and_installs_a_chart(
    kube_cluster: KubeCluster, namespace: str, tmp_path: pathlib.Path
) -> None:
    helm = str(kube_cluster.bin_dir / "helm")
    env = {
        **kube_cluster.env,
        "HELM_CACHE_HOME": str(tmp_path / "cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "config"),
        "HELM_DATA_HOME": str(tmp_path / "data"),
    }

    def run(*args: str) -> str:
        proc = subprocess.run(
            [helm, *args], capture_output=True, text=True, env=env, check=False, timeout=120
        )
        assert proc.returncode == 0, f"helm {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    assert run("version", "--short").startswith(_versions()["HELM_VERSION"])
    chart = tmp_path / "demo"
    run("create", str(chart))
    # A kubeVersion constraint is what breaks with unstamped (v0.0.0-master) binaries.
    chart_yaml = chart / "Chart.yaml"
    chart_yaml.write_text(chart_yaml.read_text() + 'kubeVersion: ">=1.30.0-0"\n')
    run(
        "install",
        "demo",
        str(chart),
        "-n",
        namespace,
        "--wait",
        "--timeout",
        "90s",
        "--set",
        "fullnameOverride=demo",
    )
    status = json.loads(run("status", "demo", "-n", namespace, "-o", "json"))
    assert status["info"]["status"] == "deployed"
    dep = kube_cluster.kubectl_json("-n", namespace, "get", "deployment", "demo")
    assert dep["status"].get("readyReplicas") == 1
