"""The default --threads: the CPUs a container may really use, not the node's core count."""

from __future__ import annotations

from pathlib import Path

import pytest
from modelfleet_runtime.cpus import decide_threads, default_threads, quota_cpus


@pytest.mark.parametrize(
    ("cpu_max", "v1_quota", "v1_period", "expected"),
    [
        ("max 100000\n", None, None, None),  # cgroup v2, no limit
        ("200000 100000\n", None, None, 2.0),
        ("150000 100000\n", None, None, 1.5),
        ("50000 100000", None, None, 0.5),
        (None, "-1\n", "100000\n", None),  # cgroup v1, no limit
        (None, "300000\n", "100000\n", 3.0),
        (None, None, None, None),  # no cgroup files at all
        ("garbage", None, None, None),
        ("0 100000", None, None, None),
        ("100000 0", None, None, None),
    ],
)
def test_quota_cpus(
    cpu_max: str | None, v1_quota: str | None, v1_period: str | None, expected: float | None
) -> None:
    assert quota_cpus(cpu_max, v1_quota, v1_period) == expected


@pytest.mark.parametrize(
    ("affinity", "quota", "expected"),
    [
        (64, None, 64),  # no quota: every CPU we may run on
        (64, 2.0, 2),  # a 2-CPU limit on a 64-core node: 2, not 64
        (64, 1.5, 2),  # fractional quota rounds up
        (64, 0.5, 1),
        (4, 8.0, 4),  # pinned to 4 CPUs with a larger quota
        (None, 3.0, 3),
        (None, None, 1),
    ],
)
def test_decide_threads(affinity: int | None, quota: float | None, expected: int) -> None:
    assert decide_threads(affinity, quota) == expected


def test_default_threads_reads_a_cgroup_v2_tree(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert default_threads(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert default_threads(tmp_path) >= 1


def test_default_threads_reads_a_cgroup_v1_tree(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu/cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu/cpu.cfs_period_us").write_text("100000\n")
    assert default_threads(tmp_path) == 1
