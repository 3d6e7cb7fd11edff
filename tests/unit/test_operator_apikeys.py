"""spec.auth: parsing, what the serving pods get, what the operator keeps of the Secret (no
hash), which pods it tells of a new revision, the status, and the label-selected watch."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from modelfleet_operator.apikeys import API_KEYS_LABEL, pods_to_tell, trim_secret
from modelfleet_operator.observe import Facts, trim_md, trim_node, trim_pod
from modelfleet_operator.plan import plan
from modelfleet_operator.render import Owner, RenderConfig
from modelfleet_operator.render.deployment import (
    API_KEYS_MOUNT,
    API_KEYS_REVISION_ANNOTATION,
    render_pod_template,
)
from modelfleet_operator.secretwatch import SELECTOR, SecretWatch, secret_refs
from modelfleet_operator.spec import InvalidSpec, parse_spec
from modelfleet_operator.status import Reason, compute_status
from operator_samples import H100, md, node
from test_operator_status import conds, observe

AUTH = {
    "auth": {
        "apiKeys": {"secretName": "resnet-keys"},
        "limits": {"requestsPerSecond": 2.5, "burst": 10, "maxConcurrency": 4},
    }
}
KEY = "mf_alice_" + "A" * 43
HASH = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(data: dict[str, str], *, rv: str = "7", labelled: bool = True) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "resnet-keys",
            "namespace": "ml",
            "resourceVersion": rv,
            "labels": {API_KEYS_LABEL: "true"} if labelled else {},
        },
        "data": {k: b64(v) for k, v in data.items()},
    }


def running_pod(name: str, told: str | None = None, phase: str = "Running") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ml", "labels": {}}
    if told is not None:
        meta["annotations"] = {API_KEYS_REVISION_ANNOTATION: told, "other": "x"}
    return {"metadata": meta, "status": {"phase": phase}}


def test_parse_auth_defaults_and_refusals() -> None:
    spec = parse_spec(md(AUTH)["spec"], name="resnet")
    assert spec.auth is not None and spec.auth.secret_name == "resnet-keys"
    assert (spec.auth.requests_per_second, spec.auth.burst, spec.auth.max_concurrency) == (
        2.5, 10, 4)  # fmt: skip
    assert spec.service.metrics_port == 9091
    assert parse_spec(md()["spec"], name="resnet").auth is None
    bad = {
        "spec.auth.apiKeys.secretName": {"auth": {"apiKeys": {}}},
        "spec.auth.apiKeys": {"auth": {"apiKeys": "keys"}},
        "spec.auth.limits.burst": {
            "auth": {"apiKeys": {"secretName": "k"}, "limits": {"burst": 3}}
        },
        "spec.auth.limits.requestsPerSecond": {
            "auth": {"apiKeys": {"secretName": "k"}, "limits": {"requestsPerSecond": 0}}
        },
        "spec.service.metricsPort": {**AUTH, "service": {"port": 9091}},
    }
    for field, over in bad.items():
        with pytest.raises(InvalidSpec) as err:
            parse_spec(md(over)["spec"], name="resnet")
        assert err.value.field.startswith(field), (field, err.value)
    with pytest.raises(InvalidSpec, match="secretName"):
        parse_spec(md({"auth": {"apiKeys": {"secretName": "Bad_Name"}}})["spec"], name="resnet")


def test_serving_pod_mounts_the_secret_and_serves_metrics_apart() -> None:
    owner = Owner.from_body(md(AUTH))
    spec = parse_spec(md(AUTH)["spec"], name="resnet")
    tpl = render_pod_template(owner, spec, RenderConfig())
    container = tpl["spec"]["containers"][0]
    args = container["args"]
    pairs = dict(zip(args[::2], args[1::2], strict=False))
    assert args[args.index("--api-keys") + 1] == API_KEYS_MOUNT
    assert args[args.index("--metrics-port") + 1] == "9091"
    assert args[args.index("--key-rate") + 1] == "2.5"
    assert args[args.index("--key-burst") + 1] == "10"
    assert args[args.index("--key-concurrency") + 1] == "4"
    assert pairs  # the args stay flag/value pairs
    assert {"name": "metrics", "containerPort": 9091, "protocol": "TCP"} in container["ports"]
    assert {"name": "api-keys", "mountPath": API_KEYS_MOUNT, "readOnly": True} in container[
        "volumeMounts"]  # fmt: skip
    volume = next(v for v in tpl["spec"]["volumes"] if v["name"] == "api-keys")
    assert volume["secret"] == {"secretName": "resnet-keys", "defaultMode": 0o444}
    assert tpl["metadata"]["annotations"]["prometheus.io/port"] == "9091"
    # probes stay on the HTTP port: the health routes are open
    assert container["readinessProbe"]["httpGet"]["port"] == "http"
    # the revision annotation never goes into the template (it would restart the pods)
    assert API_KEYS_REVISION_ANNOTATION not in tpl["metadata"]["annotations"]
    plain = render_pod_template(owner, parse_spec(md()["spec"], name="resnet"), RenderConfig())
    assert "--api-keys" not in plain["spec"]["containers"][0]["args"]
    assert plain["metadata"]["annotations"]["prometheus.io/port"] == "8080"


def test_trim_secret_keeps_ids_never_values() -> None:
    body = secret({"alice": HASH, "bob": KEY, "Bad_Id": HASH, "carol": "md5:abc"})
    body["data"]["dave"] = "%%%not base64"
    kept = trim_secret(body)
    assert kept["keyIds"] == ["alice"]
    assert kept["resourceVersion"] == "7" and kept["labelled"] is True
    text = repr(kept)
    assert HASH not in text and KEY not in text and HASH[7:] not in text
    faults = "\n".join(kept["faults"])
    assert "'bob' holds a plaintext key" in faults
    assert "'Bad_Id'" in faults and "'carol'" in faults and "'dave'" in faults
    assert trim_secret({"metadata": {"name": "x"}})["keyIds"] == []


def test_pods_to_tell_only_running_pods_not_yet_told() -> None:
    kept = trim_secret(secret({"alice": HASH}, rv="12"))
    pods = [
        running_pod("a"),
        running_pod("b", told="11"),
        running_pod("c", told="12"),
        running_pod("d", phase="Pending"),
        {**running_pod("e"), "metadata": {"name": "e", "deletionTimestamp": "now"}},
    ]
    assert pods_to_tell(kept, pods) == ["a", "b"]
    assert pods_to_tell(None, pods) == []
    # what the pod index keeps still carries the annotation, and only it
    trimmed = trim_pod({**running_pod("b", told="11"), "spec": {}})
    assert trimmed["metadata"]["annotations"] == {API_KEYS_REVISION_ANNOTATION: "11"}
    assert "annotations" not in trim_pod({**running_pod("a"), "spec": {}})["metadata"]


def auth_facts(**kw: Any) -> Facts:
    return Facts(
        md=trim_md(md(AUTH)),
        children={},
        nodes=[trim_node(node("h100-0", gpus=8, product=H100))],
        gpu_pods=[],
        pvc={"metadata": {"name": "models"}, "status": {"phase": "Bound"}},
        **kw,
    )


def test_plan_tells_pods_and_names_a_missing_secret() -> None:
    kept = trim_secret(secret({"alice": HASH}, rv="12"))
    p = plan(auth_facts(api_key_secret=kept, pods=[running_pod("a", told="11")]), RenderConfig())
    assert p.tell_pods == ("a",)
    missing = plan(auth_facts(api_key_secret=None, api_key_secret_found=False), RenderConfig())
    (problem,) = [x for x in missing.problems if x.reason == Reason.API_KEY_SECRET_NOT_FOUND]
    assert "resnet-keys" in problem.message and "mint-key" in problem.message
    plain = Facts(md=trim_md(md()), children={}, pods=[running_pod("a")])
    assert plan(plain, RenderConfig()).tell_pods == ()


def test_status_reports_the_secret() -> None:
    spec = parse_spec(md(AUTH)["spec"], name="resnet")
    good = trim_secret(secret({"alice": HASH, "bob": HASH}))
    status, _ = compute_status(observe(spec=spec, api_key_secret=good), None, "t")
    assert status["auth"] == {"secretName": "resnet-keys", "keyIds": ["alice", "bob"],
                              "secretRevision": "7", "message": None}  # fmt: skip
    assert conds(status)["Degraded"]["status"] == "False"
    assert conds(status)["Ready"]["status"] == "True"

    faulty = trim_secret(secret({"alice": HASH, "bob": KEY}, labelled=False))
    status, _ = compute_status(observe(spec=spec, api_key_secret=faulty), None, "t")
    deg = conds(status)["Degraded"]
    assert deg["status"] == "True" and deg["reason"] == Reason.API_KEY_SECRET_INVALID
    assert "plaintext" in deg["message"] and "not labelled" in deg["message"]
    assert conds(status)["Ready"]["status"] == "True"  # alice still works
    assert KEY not in repr(status)

    empty = trim_secret(secret({}))
    status, _ = compute_status(observe(spec=spec, api_key_secret=empty), None, "t")
    assert "every request gets 401" in conds(status)["Degraded"]["message"]

    from modelfleet_operator.status import Problem  # noqa: PLC0415

    missing = Problem(Reason.API_KEY_SECRET_NOT_FOUND, "Secret resnet-keys not found")
    status, transitions = compute_status(
        observe(spec=spec, api_key_secret=None, api_key_secret_found=False, problems=[missing]),
        None,
        "t",
    )
    assert conds(status)["Ready"]["reason"] == Reason.API_KEY_SECRET_NOT_FOUND
    assert status["auth"]["message"] == "Secret resnet-keys not found"
    assert any(t.event_type == "Warning" for t in transitions)
    # spec.auth removed: status.auth goes (a merge patch's null)
    plain = parse_spec(md()["spec"], name="resnet")
    status, _ = compute_status(observe(spec=plain), {"auth": {"secretName": "x"}}, "t")
    assert status["auth"] is None


class Index:
    def __init__(self, items: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.items = items

    def get(self, key: Any, default: Any = None) -> Any:
        return [self.items[key]] if key in self.items else default

    def __iter__(self) -> Any:
        return iter(list(self.items))


def test_secret_refs_maps_secrets_to_their_model_deployments() -> None:
    index = Index({
        ("ml", "a"): md(AUTH, name="a"),
        ("ml", "b"): md(AUTH, name="b"),
        ("ml", "c"): md(name="c"),
        ("web", "d"): md({"auth": {"apiKeys": {"secretName": "other"}}}, name="d"),
        ("web", "e"): md({"auth": "junk"}, name="e"),
    })  # fmt: skip
    assert secret_refs(index) == {
        "ml": {"resnet-keys": {("ml", "a"), ("ml", "b")}},
        "web": {"other": {("web", "d")}},
    }


def test_secret_watch_lists_watches_and_notifies_only_on_change() -> None:
    async def scenario() -> tuple[list[Any], list[Any], dict[Any, Any]]:
        index = Index({("ml", "a"): md(AUTH, name="a")})
        calls: list[Any] = []
        feed: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()

        async def list_secrets(ns: str, selector: str) -> tuple[list[dict[str, Any]], str]:
            calls.append(("list", ns, selector))
            return [secret({"alice": HASH}, rv="5")], "5"

        async def watch_secrets(
            ns: str, selector: str, rv: str
        ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
            calls.append(("watch", ns, rv))
            while (item := await feed.get()) is not None:
                yield item
            raise RuntimeError("410 Gone")  # the watch breaks: list again

        told: list[Any] = []
        watch = SecretWatch(index, list_secrets, watch_secrets, told.append, tick_s=0.01)
        task = asyncio.create_task(watch.run())
        await asyncio.sleep(0.05)
        await feed.put(("BOOKMARK", {"metadata": {"resourceVersion": "6"}}))
        await feed.put(("MODIFIED", secret({"alice": HASH, "bob": HASH}, rv="8")))
        # an unrelated field changing the same ids, same revision: no news
        await feed.put(("MODIFIED", secret({"alice": HASH, "bob": HASH}, rv="8")))
        await asyncio.sleep(0.05)
        ids = dict(watch.secrets)
        await feed.put(("DELETED", secret({}, rv="9")))
        await feed.put(None)
        await asyncio.sleep(1.3)  # the backoff, then a fresh list
        index.items.clear()  # no ModelDeployment uses auth any more: the watch stops
        await asyncio.sleep(0.05)
        task.cancel()
        return calls, told, {"ids": ids, "left": dict(watch.secrets)}

    calls, told, seen = asyncio.run(scenario())
    assert calls[0] == ("list", "ml", SELECTOR) and calls[1] == ("watch", "ml", "5")
    assert ("list", "ml", SELECTOR) in calls[2:]  # listed again after the break
    assert seen["ids"][("ml", "resnet-keys")]["keyIds"] == ["alice", "bob"]
    # list (new), modified (new ids), deleted, relisted (back): 4 notifications, not 5
    assert told == [("ml", "a")] * 4
    assert seen["left"] == {}
