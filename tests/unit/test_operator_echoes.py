"""A write's own watch event (its echo) is no news, and ends the write's time in flight: a
child deleted right after it was created, with no other event between, comes back."""

from __future__ import annotations

from modelfleet_operator.reconcile import Reconciler
from test_operator_reconcile_inmemory import KEY, cluster, run


def test_a_child_deleted_after_only_its_echo_comes_back() -> None:
    # As after a control-plane restart: no controller touches the new children, so the
    # only events after the first reconcile are the echoes of its own writes.
    c = cluster()
    rec = Reconciler(c, c.view(), metrics=c.metrics)  # type: ignore[arg-type]
    run(rec.reconcile(KEY))
    rec.view = c.view()
    for kind in ("Deployment", "Service", "PodDisruptionBudget"):
        child = c.get(kind)
        assert child is not None
        assert rec.inflight.is_echo((kind, *KEY), child["metadata"]["resourceVersion"])
    del c.objects["Service"][KEY]
    rec.view = c.view()
    c.writes.clear()
    run(rec.reconcile(KEY))
    assert c.writes == ["apply Service"]


def test_a_write_not_yet_shown_by_the_watch_is_not_sent_again() -> None:
    c = cluster()
    c.echo = False
    rec = Reconciler(c, c.view(), metrics=c.metrics)  # type: ignore[arg-type]
    run(rec.reconcile(KEY))
    first = list(c.writes)
    assert not rec.inflight.is_echo(("Service", *KEY), "1")  # an older version: no echo
    run(rec.reconcile(KEY))
    assert c.writes == first
