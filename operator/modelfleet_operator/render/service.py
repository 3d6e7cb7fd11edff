"""The Service in front of the serving pods."""

from __future__ import annotations

from typing import Any

from ..spec import ModelDeploymentSpec
from .common import Owner, metadata, selector_labels


def render_service(owner: Owner, spec: ModelDeploymentSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, spec),
        "spec": {
            "type": spec.service.type,
            "selector": selector_labels(owner),
            "ports": [
                {
                    "name": "http",
                    "port": spec.service.port,
                    "targetPort": "http",
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }


def service_url(owner: Owner, spec: ModelDeploymentSpec) -> str:
    return (
        f"http://{owner.name}.{owner.namespace}.svc:{spec.service.port}/v2/models/{spec.model.name}"
    )
