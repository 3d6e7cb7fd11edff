"""The PodDisruptionBudget: voluntary evictions (node drains) take one serving pod at a time."""

from __future__ import annotations

from typing import Any

from ..spec import ModelDeploymentSpec
from .common import Owner, metadata, selector_labels


def render_pdb(owner: Owner, spec: ModelDeploymentSpec) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(owner, spec),
        "spec": {
            # maxUnavailable (not minAvailable) so a single replica can still be drained.
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(owner)},
            # A pod that never got ready (e.g. crash-looping on a bad model) must not block
            # a node drain.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
