"""spec.auth's Secret, judged without the API: what the operator keeps of it (ids, never a
hash), what is wrong with it, and which pods must be told that it changed.

The runtime reads the Secret as a mounted volume. The kubelet rewrites such a volume only
when it syncs the pod: periodically (about a minute) or when the pod object changes. So on
every new revision of the Secret the operator writes that revision into an annotation of
each running serving pod; the kubelet's sync follows at once and the runtime, which reads
its key directory every second, takes the new keys within seconds, with no restart.

The key format is the runtime's (modelfleet_runtime.auth); the operator never imports the
runtime, so the two patterns are written down again here.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .render.deployment import API_KEYS_REVISION_ANNOTATION
from .spec import AuthSpec

Obj = Mapping[str, Any]

API_KEYS_LABEL = "modelfleet.io/api-keys"
KEY_ID_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
HASH_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
KEY_PREFIX = "mf_"
MAX_LISTED = 10  # entries named in a message


def trim_secret(body: Obj) -> dict[str, Any]:
    """What the operator keeps of an API key Secret: its identity, revision, whether it is
    labelled for the watch, the valid key ids and the faulty entries' names with why. The
    values themselves are dropped here."""
    meta = body.get("metadata") or {}
    data = body.get("data") or {}
    ids: list[str] = []
    faults: list[str] = []
    for name in sorted(data) if isinstance(data, Mapping) else ():
        if not KEY_ID_PATTERN.match(str(name)):
            faults.append(f"{name!r} is not a key id (1-32 of a-z, 0-9, '-')")
            continue
        try:
            value = base64.b64decode(str(data[name] or ""), validate=True).decode().strip()
        except (binascii.Error, UnicodeDecodeError):
            value = ""
        if HASH_PATTERN.match(value):
            ids.append(str(name))
        elif value.startswith(KEY_PREFIX):
            faults.append(f"{name!r} holds a plaintext key: store only its sha256 (a leaked "
                          "key: mint a new one)")  # fmt: skip
        else:
            faults.append(f"{name!r} is not sha256:<64 lower-case hex digits>")
    labels = meta.get("labels") or {}
    return {
        "namespace": meta.get("namespace"),
        "name": meta.get("name"),
        "resourceVersion": str(meta.get("resourceVersion") or ""),
        "labelled": labels.get(API_KEYS_LABEL) == "true",
        "keyIds": ids,
        "faults": faults,
    }


def secret_message(auth: AuthSpec, secret: Obj | None) -> str | None:
    """What is wrong with the Secret as seen (None: nothing); the missing Secret is
    ``missing_secret`` (it stops the pods, this does not)."""
    if secret is None:
        return None
    parts = []
    faults = list(secret.get("faults") or ())
    if faults:
        shown = "; ".join(faults[:MAX_LISTED])
        more = f" (and {len(faults) - MAX_LISTED} more)" if len(faults) > MAX_LISTED else ""
        parts.append(f"Secret {auth.secret_name}: entries skipped: {shown}{more}")
    if not secret.get("keyIds"):
        parts.append(f"Secret {auth.secret_name} holds no valid key: every request gets 401")
    if not secret.get("labelled"):
        parts.append(
            f"Secret {auth.secret_name} is not labelled {API_KEYS_LABEL}=true: key changes reach "
            "the pods only with the kubelet's periodic sync (about a minute), not within seconds"
        )
    return "; ".join(parts) or None


def missing_secret(auth: AuthSpec, namespace: str) -> str:
    return (
        f"Secret {auth.secret_name} (spec.auth.apiKeys.secretName) not found in namespace "
        f"{namespace}: the serving pods cannot start without it; mint a key with "
        f"`modelfleet-runtime mint-key <id> --secret {auth.secret_name} | kubectl apply "
        f"-n {namespace} -f -`"
    )


def pods_to_tell(secret: Obj | None, pods: Sequence[Obj]) -> list[str]:
    """Running, not deleting serving pods whose revision annotation is not the Secret's
    current resourceVersion. Pods not running yet mount the Secret as it is when they
    start; telling them would be a write for nothing."""
    if secret is None or not secret.get("resourceVersion"):
        return []
    revision = str(secret["resourceVersion"])
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") != "Running":
            continue
        if (meta.get("annotations") or {}).get(API_KEYS_REVISION_ANNOTATION) != revision:
            out.append(str(meta.get("name")))
    return sorted(out)


def auth_status(auth: AuthSpec | None, secret: Obj | None, found: bool) -> dict[str, Any] | None:
    """status.auth (None without spec.auth)."""
    if auth is None:
        return None
    if not found:
        message: str | None = f"Secret {auth.secret_name} not found"
    else:
        message = secret_message(auth, secret)
    return {
        "secretName": auth.secret_name,
        "keyIds": list((secret or {}).get("keyIds") or ()),
        "secretRevision": (secret or {}).get("resourceVersion") or None,
        "message": message,  # None: a merge patch's null, so a fixed problem's text goes
    }
