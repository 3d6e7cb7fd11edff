"""Pure renderers: a parsed spec in, plain manifest dicts out (one module per kind)."""

from __future__ import annotations

from typing import Any

from ..spec import ModelDeploymentSpec
from .common import Owner, RenderConfig
from .deployment import Strategy, render_deployment
from .hpa import render_hpa
from .keda import render_scaled_object
from .pdb import render_pdb
from .service import render_service
from .warm import child_kind, render_warm_capacity

__all__ = ["Owner", "RenderConfig", "Strategy", "child_kind", "render_all"]


def render_all(
    owner: Owner, spec: ModelDeploymentSpec, config: RenderConfig, strategy: Strategy
) -> list[dict[str, Any]]:
    """Every child the ModelDeployment wants, in apply order."""
    deployment = render_deployment(owner, spec, config, strategy)
    children = [
        deployment,
        render_service(owner, spec),
        render_pdb(owner, spec),
    ]
    # Exactly one owner of the scale subresource: the builtin engine renders no child (the
    # operator's scaler writes /scale itself), hpa an HPA, keda a ScaledObject.
    engine = spec.autoscaling.engine if spec.autoscaling is not None else None
    if engine == "hpa":
        children.append(render_hpa(owner, spec))
    elif engine == "keda":
        children.append(render_scaled_object(owner, spec))
    warm = render_warm_capacity(owner, spec, config, deployment["spec"]["template"]["spec"])
    if warm is not None:
        children.append(warm)
    return children
