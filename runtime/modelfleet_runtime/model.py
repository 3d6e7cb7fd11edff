"""Load a model directory (TorchScript, torch.export, safetensors + entrypoint) and run batches.

torch is imported here, never at CLI import time, so ``--help`` and ``fetch`` stay fast.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import LoadError, ModelFailed
from .fetch import read_record, sha256_file
from .manifest import Manifest
from .protocol import TORCH_DTYPES, InferRequest
from .safetensors_io import read_safetensors

log = logging.getLogger(__name__)

PLATFORMS = {
    "torchscript": "pytorch_libtorch",
    "torch-export": "pytorch_export",
    "safetensors": "pytorch_safetensors",
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    model_dir: Path
    manifest: Manifest
    device: str = "auto"
    dtype: str | None = None
    max_batch_size: int = 1


def verify_digest(path: Path, *expected: str | None) -> None:
    """Each expected digest must be the weights file's, or (after ``fetch``) the digest of the
    archive these very weights were unpacked from."""
    wanted = {e.removeprefix("sha256:").lower() for e in expected if e}
    if not wanted:
        return
    actual = sha256_file(path)
    record = read_record(path.parent)
    from_archive = (record.get("weights") == path.name
                    and record.get("weights_sha256") == actual)  # fmt: skip
    for want in wanted:
        if actual != want and not (from_archive and record.get("sha256") == want):
            raise LoadError(f"digest mismatch for {path.name}: expected sha256:{want}, "
                            f"got sha256:{actual}")  # fmt: skip


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise LoadError("device cuda requested but no CUDA device is available")
    return torch.device(device)


def _import_entrypoint(spec: str, model_dir: Path) -> Callable[..., Any]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise LoadError(f"entrypoint must look like 'module:callable', got {spec!r}")
    # The model directory may ship its own module next to the weights.
    if str(model_dir) not in sys.path:
        sys.path.insert(0, str(model_dir))
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise LoadError(f"cannot import entrypoint {spec!r}: {exc}") from exc
    if not callable(obj):
        raise LoadError(f"entrypoint {spec!r} is not callable")
    return obj  # type: ignore[no-any-return]


def _load_module(opts: LoadOptions, weights: Path, device: torch.device) -> Any:
    fmt = opts.manifest.format
    if fmt == "torchscript":
        with warnings.catch_warnings():  # TorchScript is deprecated upstream, still supported
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(weights), map_location=device)  # type: ignore[no-untyped-call]
    if fmt == "torch-export":
        program = torch.export.load(str(weights))
        return program.module().to(device)
    if not opts.manifest.entrypoint:
        raise LoadError("format safetensors needs an entrypoint (module:callable)")
    factory = _import_entrypoint(opts.manifest.entrypoint, opts.model_dir)
    # Built and loaded on the target device: no CPU copy of the weights on the way to a GPU.
    with device:
        module = factory(**opts.manifest.entrypoint_kwargs)
    if not isinstance(module, torch.nn.Module):
        raise LoadError(f"entrypoint returned {type(module).__name__}, not a torch.nn.Module")
    state = read_safetensors(weights, device)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise LoadError(f"weights do not fit the entrypoint's module: {exc}") from exc
    del state
    return module.to(device)  # parameters the factory left elsewhere


class Model:
    """A loaded model plus the batch-forward logic the batcher calls on its thread."""

    def __init__(self, opts: LoadOptions) -> None:
        manifest = opts.manifest
        self.manifest = manifest
        self.platform = PLATFORMS[manifest.format]
        weights = opts.model_dir / manifest.weights
        if not weights.is_file():
            raise LoadError(f"weights file {weights} not found")
        self.device = resolve_device(opts.device)
        self.dtype = DTYPES[opts.dtype] if opts.dtype else None
        self.batched = manifest.batched
        self.max_batch_size = opts.max_batch_size if self.batched else 1
        self._in_dtypes = [TORCH_DTYPES[s.datatype] for s in manifest.inputs]
        try:
            module = _load_module(opts, weights, self.device)
            if manifest.format != "torch-export":  # exported programs refuse eval()
                module.eval()
            if self.dtype is not None:
                module = module.to(self.dtype)
        except LoadError:
            raise
        except Exception as exc:
            raise LoadError(f"cannot load {manifest.format} model {weights.name}: {exc}") from exc
        self._module = module

    def _inputs(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for tensor in tensors:
            t = tensor
            if t.data_ptr() % t.element_size():
                # a view of a request body at an odd offset (a request run alone; a batch's
                # torch.cat is aligned): kernels may assume aligned elements
                t = t.clone()
            if t.device != self.device:
                t = t.to(self.device, non_blocking=True)
            if self.dtype is not None and t.is_floating_point() and t.dtype != self.dtype:
                t = t.to(self.dtype)
            out.append(t)
        return out

    def _call(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        result = self._module(*self._inputs(tensors))
        if isinstance(result, torch.Tensor):
            outs = [result]
        elif isinstance(result, dict):
            try:
                outs = [result[s.name] for s in self.manifest.outputs]
            except KeyError as exc:
                raise ModelFailed(f"model output dict lacks {exc}") from None
        elif isinstance(result, list | tuple):
            outs = list(result)
        else:
            raise ModelFailed(f"model returned {type(result).__name__}, not tensors")
        if len(outs) != len(self.manifest.outputs):
            raise ModelFailed(
                f"model returned {len(outs)} outputs, manifest declares "
                f"{len(self.manifest.outputs)}"
            )
        return [o.detach().cpu() if o.device.type != "cpu" else o.detach() for o in outs]

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        with torch.inference_mode():
            return self._call(inputs)

    def run_batch(self, requests: list[InferRequest]) -> list[list[torch.Tensor] | BaseException]:
        """Batcher callback: one forward pass per group of requests with equal row shapes."""
        if len(requests) == 1 or not self.batched:
            return [self._guarded(r) for r in requests]
        groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(tuple(tuple(t.shape[1:]) for t in r.inputs), []).append(i)
        results: list[list[torch.Tensor] | BaseException] = [[] for _ in requests]
        for members in groups.values():
            try:
                with torch.inference_mode():
                    merged = [
                        torch.cat([requests[i].inputs[k] for i in members])
                        for k in range(len(self._in_dtypes))
                    ]
                    outs = self._call(merged)
                total = merged[0].shape[0]
                for o in outs:
                    if o.dim() == 0 or o.shape[0] != total:
                        raise ModelFailed(
                            f"model output of shape {list(o.shape)} has no batch axis of {total}"
                        )
                start = 0
                for i in members:
                    n = requests[i].rows
                    results[i] = [o.narrow(0, start, n) for o in outs]
                    start += n
            except Exception as exc:
                for i in members:
                    results[i] = _model_error(exc)
        return results

    def _guarded(self, req: InferRequest) -> list[torch.Tensor] | BaseException:
        try:
            return self.forward(req.inputs)
        except Exception as exc:
            return _model_error(exc)

    def warm_up(self) -> None:
        """Run the forward pass at batch 1 and at the max batch size before reporting ready."""
        sizes = sorted({1, self.max_batch_size})
        for rows in sizes:
            tensors = []
            for spec, dtype in zip(self.manifest.inputs, self._in_dtypes, strict=True):
                shape = [rows if (i == 0 and spec.batched) else max(d, 1)
                         for i, d in enumerate(spec.shape)]  # fmt: skip
                tensors.append(torch.zeros(shape, dtype=dtype))
            try:
                for _ in range(2):
                    self.forward(tensors)
            except Exception as exc:
                raise LoadError(f"warm-up forward pass at batch {rows} failed: {exc}") from exc
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _model_error(exc: Exception) -> BaseException:
    if isinstance(exc, ModelFailed):
        return exc
    return ModelFailed(f"model raised {type(exc).__name__}: {exc}")


def load(opts: LoadOptions, digest: str | None = None) -> tuple[Model, float]:
    """Verify, load and warm up; returns the model and the seconds it took."""
    started = time.monotonic()
    weights = opts.model_dir / opts.manifest.weights
    if not weights.is_file():
        raise LoadError(f"weights file {weights} not found")
    verify_digest(weights, digest, opts.manifest.sha256)
    model = Model(opts)
    model.warm_up()
    return model, time.monotonic() - started
