"""The runtime's command line: the contract the operator renders against."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from modelfleet_runtime.cli import build_parser, env_name, serve_config

SERVE_FLAGS = [
    "--model-dir", "--name", "--version", "--format", "--entrypoint", "--digest", "--device",
    "--dtype", "--max-batch-size", "--max-batch-delay-ms", "--max-queue-size", "--host",
    "--port", "--drain-timeout", "--max-body-bytes", "--overload-status", "--threads",
    "--log-level",
]  # fmt: skip
DIGEST = "sha256:" + "ab" * 32


def test_every_flag_is_documented_with_its_env_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in SERVE_FLAGS:
        assert flag in text and env_name(flag) in text, flag


def test_full_command_line_parses() -> None:
    args = build_parser().parse_args([
        "serve", "--model-dir", "/models", "--name", "resnet", "--version", "3",
        "--format", "torch-export", "--entrypoint", "pkg.mod:build", "--digest", DIGEST,
        "--device", "cuda", "--dtype", "float16", "--max-batch-size", "32",
        "--max-batch-delay-ms", "5", "--max-queue-size", "512", "--host", "::",
        "--port", "9000", "--drain-timeout", "45", "--max-body-bytes", "1048576",
        "--overload-status", "429", "--threads", "4", "--log-level", "debug",
    ])  # fmt: skip
    cfg = serve_config(args)
    assert cfg.model_dir == Path("/models") and cfg.name == "resnet" and cfg.version == "3"
    assert (cfg.format, cfg.entrypoint, cfg.digest) == ("torch-export", "pkg.mod:build", DIGEST)
    assert (cfg.device, cfg.dtype, cfg.max_batch_size) == ("cuda", "float16", 32)
    assert (cfg.max_batch_delay_ms, cfg.max_queue_size, cfg.port) == (5.0, 512, 9000)
    assert (cfg.drain_timeout, cfg.max_body_bytes, cfg.overload_status) == (45.0, 1048576, 429)
    assert (cfg.threads, cfg.log_level, cfg.host) == (4, "debug", "::")


def test_defaults() -> None:
    cfg = serve_config(build_parser().parse_args(["serve", "--model-dir", "m"]))
    assert (cfg.host, cfg.port, cfg.device, cfg.overload_status) == ("0.0.0.0", 8080, "auto", 503)
    assert cfg.name is None and cfg.digest is None and cfg.threads is None


def test_environment_supplies_defaults_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFLEET_MODEL_DIR", "/env/models")
    monkeypatch.setenv("MODELFLEET_MAX_BATCH_SIZE", "64")
    monkeypatch.setenv("MODELFLEET_MAX_BATCH_DELAY_MS", "2.5")
    monkeypatch.setenv("MODELFLEET_PORT", "7000")
    cfg = serve_config(build_parser().parse_args(["serve", "--port", "7001"]))
    assert cfg.model_dir == Path("/env/models") and cfg.max_batch_size == 64
    assert cfg.max_batch_delay_ms == 2.5 and cfg.port == 7001


@pytest.mark.parametrize(
    "argv",
    [
        ["serve"],
        ["serve", "--model-dir", "m", "--digest", "md5:abc"],
        ["serve", "--model-dir", "m", "--device", "tpu"],
        ["serve", "--model-dir", "m", "--max-batch-size", "0"],
        ["serve", "--model-dir", "m", "--overload-status", "500"],
        ["serve", "--model-dir", "m", "--port", "70000"],
        ["fetch", "file:///x"],
    ],
)
def test_invalid_command_lines_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2


def test_fetch_command_line() -> None:
    args = build_parser().parse_args(["fetch", "https://h/m.tar.gz", "/models", "--digest", DIGEST])
    assert (args.uri, args.dest, args.digest) == ("https://h/m.tar.gz", Path("/models"), DIGEST)


def test_cli_and_fetch_do_not_import_torch() -> None:
    """--help and the fetch init container stay fast: torch loads only for serve."""
    code = ("import sys, modelfleet_runtime.cli, modelfleet_runtime.fetch; "
            "sys.exit('torch' in sys.modules)")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_console_script_and_module_entry_points() -> None:
    for argv in (
        [sys.executable, "-m", "modelfleet_runtime", "--help"],
        [str(Path(sys.executable).with_name("modelfleet-runtime")), "serve", "--help"],
    ):
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
        assert "modelfleet-runtime" in out.stdout


def test_kubernetes_service_link_variables_are_not_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Service named "modelfleet" injects MODELFLEET_PORT=tcp://... into pods."""
    monkeypatch.setenv("MODELFLEET_PORT", "tcp://10.96.0.12:8080")
    cfg = serve_config(build_parser().parse_args(["serve", "--model-dir", "m"]))
    assert cfg.port == 8080
