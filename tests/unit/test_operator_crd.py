"""The generated CRD: in sync with crds/, teaches through descriptions, structural, and its
defaults agree with spec.py's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from modelfleet_operator import crd
from modelfleet_operator.spec import parse_spec
from operator_samples import md

ROOT = Path(__file__).resolve().parents[2]


def schema() -> dict[str, Any]:
    return crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for key, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")


def test_crds_dir_is_generated_from_crd_py() -> None:
    path = ROOT / "crds" / crd.CRD_FILE
    assert path.read_text() == crd.render_yaml(), (
        "crds/ drifted: run .venv/bin/python -m modelfleet_operator.crd --write crds"
    )
    assert crd.main(["--check", str(ROOT / "crds")]) == 0


def test_check_flags_a_stale_copy(tmp_path: Path) -> None:
    (tmp_path / crd.CRD_FILE).write_text("stale")
    assert crd.main(["--check", str(tmp_path)]) == 1
    assert crd.main(["--write", str(tmp_path)]) == 0
    assert crd.main(["--check", str(tmp_path)]) == 0


def test_every_field_has_a_description() -> None:
    # .metadata is the one exception: the apiserver forbids anything but its type.
    missing = [
        p or "<root>" for p, n in walk(schema()) if not n.get("description") and p != ".metadata"
    ]
    assert missing == []


def test_structural_every_node_has_a_type() -> None:
    for path, node in walk(schema()):
        assert node.get("type") or node.get("x-kubernetes-int-or-string"), path
        if node.get("type") == "object" and "properties" not in node:
            # free-form objects must say so, or the apiserver prunes their content
            assert (
                "additionalProperties" in node
                or node.get("x-kubernetes-preserve-unknown-fields")
                or path == ".metadata"
            ), path


def test_names_subresources_and_columns() -> None:
    spec = crd.crd()["spec"]
    assert spec["names"]["shortNames"] == ["mdep"]
    assert spec["names"]["categories"] == ["modelfleet"]
    version = spec["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert "status" in version["subresources"]
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    for col in ("Ready", "Replicas", "GPU", "Model", "Reason", "Age"):
        assert col in names


def test_cross_field_rules_are_cel() -> None:
    rules = {r["rule"] for _, n in walk(schema()) for r in n.get("x-kubernetes-validations", [])}
    assert "!(has(self.count) && has(self.mig))" in rules
    assert "self.minReplicas <= self.maxReplicas" in rules
    assert any("safetensors" in r for r in rules)
    assert any("pvc|https?|s3|file" in r for r in rules)


def apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """What the apiserver does with `default`: recursively, including defaulted {}."""
    if node.get("type") != "object" or not isinstance(value, dict):
        return value
    out = dict(value)
    for key, child in (node.get("properties") or {}).items():
        if key not in out and "default" in child:
            out[key] = child["default"]
        if key in out:
            out[key] = apply_defaults(child, out[key])
    return out


def test_schema_defaults_agree_with_spec_py() -> None:
    spec_schema = schema()["properties"]["spec"]
    for raw in (
        md()["spec"],
        {"model": {"uri": "https://x/y"}},
        md({"autoscaling": {"maxReplicas": 4, "target": 2}})["spec"],
        md({"autoscaling": {"minReplicas": 0, "maxReplicas": 4, "target": 2}})["spec"],
        md({"autoscaling": {"minReplicas": 0, "maxReplicas": 4, "target": 2, "scaleToZero": {}}})[
            "spec"
        ],
    ):
        defaulted = apply_defaults(spec_schema, raw)
        assert parse_spec(defaulted, name="n") == parse_spec(raw, name="n")


def test_yaml_round_trips() -> None:
    assert yaml.safe_load(crd.render_yaml()) == crd.crd()


def test_api_docs_are_generated_from_the_schema() -> None:
    path = ROOT / "docs" / "api.md"
    assert path.read_text() == crd.render_api_docs(), (
        "docs/api.md drifted: run .venv/bin/python -m modelfleet_operator.crd --docs docs/api.md"
    )
    text = path.read_text()
    assert "`spec.gpu.mig`" in text and "InsufficientGPU" in text
