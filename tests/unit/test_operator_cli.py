"""The operator's command line: what the Helm chart and hack/dev pass must parse."""

from __future__ import annotations

import pytest
from modelfleet_operator.__main__ import build_parser, settings


def test_chart_args_parse() -> None:
    args = build_parser().parse_args(
        [
            "--all-namespaces",
            "--liveness=http://0.0.0.0:8080/healthz",
            "--metrics-port=9090",
            "--log-format=json",
            "--verbose",
        ]
    )
    assert args.all_namespaces and args.namespace is None
    assert args.liveness == "http://0.0.0.0:8080/healthz" and args.metrics_port == 9090
    assert args.log_format == "json" and args.verbose
    args = build_parser().parse_args(["--namespace=ml", "--namespace=ml-staging", "-q"])
    assert args.namespace == ["ml", "ml-staging"] and args.quiet


def test_scope_is_required_and_exclusive() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["-A", "-n", "ml"])


def test_runtime_image_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFLEET_RUNTIME_IMAGE", "registry.local/rt:9")
    monkeypatch.setenv("MODELFLEET_RUNTIME_IMAGE_PULL_POLICY", "Always")
    args = build_parser().parse_args(["-A"])
    assert (args.runtime_image, args.runtime_image_pull_policy) == ("registry.local/rt:9", "Always")


def test_kopf_settings_keep_bookkeeping_in_our_annotations() -> None:
    s = settings()
    assert "modelfleet.io" in repr(s.persistence.progress_storage.prefix)


def test_kopf_retries_its_watches_briefly_and_long() -> None:
    # Through a control-plane restart: never more than 2 s between tries, ~5 min in all.
    backoffs = list(settings().networking.error_backoffs)  # type: ignore[arg-type]
    assert max(backoffs) <= 2 and sum(backoffs) >= 300


def test_workers_and_resync_parse() -> None:
    args = build_parser().parse_args(["-A", "--workers=4", "--resync-seconds=30"])
    assert (args.workers, args.resync_seconds) == (4, 30.0)
