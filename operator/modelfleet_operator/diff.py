"""Does a live child already hold what the operator would apply? (pure)

Only the fields the operator renders are compared: the API server adds defaults, status and
other managers' fields, and none of those is drift. A converged child therefore costs no write.

- maps: every rendered key must match; extra live keys are someone else's (or defaults);
- lists: the same length and each element matching, because a foreign element in a list the
  operator renders (a hand-edited Service port, an extra container) is something server-side
  apply cannot remove by itself: those lists are replaced whole (``list_paths``);
- scalars: equal, where a missing live value equals a rendered zero value (``false``, ``0``,
  ``""``: the API server omits them) and quantities compare by value ("0.5" is "500m").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .spec import parse_cpu_or_bytes

# Lists that other controllers legitimately append to: compared as "ours are present".
SUBSET_LISTS = ("/metadata/ownerReferences", "/metadata/finalizers")


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _scalar_equal(desired: Any, live: Any) -> bool:
    if live is None:
        return (
            desired is None
            or desired is False
            or desired == ""
            or (type(desired) is int and desired == 0)
        )
    if desired == live and type(desired) is type(live):
        return True
    if isinstance(desired, str) and isinstance(live, str):
        a, b = parse_cpu_or_bytes(desired), parse_cpu_or_bytes(live)
        return a is not None and a == b
    if isinstance(desired, int | float) and isinstance(live, int | float):
        return not isinstance(desired, bool) and not isinstance(live, bool) and desired == live
    return False


def differences(desired: Any, live: Any, path: str = "") -> list[str]:
    """JSON pointers (RFC 6901) of every rendered field whose live value differs."""
    if isinstance(desired, Mapping):
        if live is None:
            live = {}
        if not isinstance(live, Mapping):
            return [path]
        out: list[str] = []
        for key, value in desired.items():
            out += differences(value, live.get(key), f"{path}/{_escape(str(key))}")
        return out
    if isinstance(desired, list):
        if live is None:
            live = []
        if not isinstance(live, list):
            return [path]
        if path in SUBSET_LISTS:
            return [] if all(any(not differences(d, x) for x in live) for d in desired) else [path]
        if len(live) != len(desired):
            return [path]
        out = []
        for i, (d, x) in enumerate(zip(desired, live, strict=True)):
            out += differences(d, x, f"{path}/{i}")
        return out
    return [] if _scalar_equal(desired, live) else [path]


def _list_prefix(path: str, desired: Any) -> str | None:
    """The outermost list on ``path`` in ``desired`` (None when the path crosses no list)."""
    node = desired
    walked = ""
    for part in path.split("/")[1:]:
        if isinstance(node, list):
            return walked
        if not isinstance(node, Mapping):
            return None
        key = part.replace("~1", "/").replace("~0", "~")
        node = node.get(key)
        walked += f"/{part}"
    return walked if isinstance(node, list) else None


def list_paths(desired: Mapping[str, Any], diffs: Sequence[str]) -> list[str]:
    """Of the differing paths, the rendered lists to replace whole (outermost first)."""
    found: list[str] = []
    for path in diffs:
        prefix = _list_prefix(path, desired)
        if prefix is None or prefix.startswith("/metadata/") or prefix in found:
            continue
        if any(prefix.startswith(f + "/") for f in found):
            continue
        found = [f for f in found if not f.startswith(prefix + "/")] + [prefix]
    return found


def value_at(doc: Mapping[str, Any], pointer: str) -> Any:
    node: Any = doc
    for part in pointer.split("/")[1:]:
        key = part.replace("~1", "/").replace("~0", "~")
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node
