"""The `torch-sparse` format: a runnable inference model, each layer on its measured kernels.

Export times every pruned Linear, Conv2d and self-attention on the input it receives from a
batch of each of `batch_sizes` samples, with `threads` torch threads (`kernels.inference`), and
replaces the layers where a CSR product is faster at some batch size with their twins
(`CsrLayer`, `CsrAttention`), which dispatch each call on the size of the batch it brings
(`Dispatch`: dense where dense measured faster, on a dense copy made only for such layers);
every other layer stays as it was. With `device` "cuda" (and `precision` fp16 or bf16, which
the 2:4 kernels take) it times the model on the GPU instead, and the 2:4 Linears that are
faster on semi-structured kernels become `SemiStructuredLinear`s.
The sparse model's state dict goes to model.safetensors (CSR layers as their index and value
tensors, nothing dense); manifest.json lists the replaced layers, the timings behind every
choice at every batch size, the memory of the weights (dense, as held, and the dense copies
kept), the machine and thread count, and the largest difference between the sparse and the
masked dense model's outputs. `load` rebuilds the model from the user's own architecture, and
warns when the machine or the thread count differ from the export's (the choices are measured).
"""

from __future__ import annotations

import copy
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from acdc_recipe.errors import first_line
from acdc_recipe.exporter.source import (
    ExportError,
    SparseModel,
    example_batch,
    first_problem,
)
from acdc_recipe.formats.run_dir import ExportDir
from acdc_recipe.models.objective import logits_of
from acdc_recipe.runtime.kernels.dense_routes import (
    bytes_of,
    dense_route,
    dense_state,
    route_dense_at,
)
from acdc_recipe.runtime.kernels.inference import (
    CsrAttention,
    CsrLayer,
    Dispatch,
    LayerChoice,
    csr_twin,
    eligible_layers,
    layer_kind,
    layer_weights,
    replace_module,
    sparse_inference_model,
    without_fused_paths,
)
from acdc_recipe.runtime.kernels.semi_structured import agrees
from acdc_recipe.runtime.kernels.semi_structured_layer import SemiStructuredLinear
from acdc_recipe.runtime.kernels.training import without_kernels

NAME = "torch-sparse"
DEFAULT_BATCH_SIZES = (1, 8, 64, 256)
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # fp32: sums in another order
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SEMI_STRUCTURED_SKIPPED = (
    "2:4 semi-structured kernels (torch.sparse.to_sparse_semi_structured) run on CUDA GPUs "
    "of compute capability 8.0 or newer only; this export runs on the CPU, so 2:4 layers take "
    "the same CSR-or-dense choice as any other (export with --device cuda --precision bf16 on "
    "such a GPU)"
)


class MachineWarning(UserWarning):
    """A torch-sparse export loaded where its kernels were not chosen."""


def _machine(device: torch.device) -> dict[str, Any]:
    machine = {
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    return machine


def check_device(device: str, precision: str) -> torch.device:
    """The device an export times on; refused in one paragraph when it cannot."""
    if device not in ("cpu", "cuda"):
        raise ExportError(f"unknown device {device!r}; choose cpu or cuda")
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose one of fp32, fp16, bf16")
    if device == "cuda" and not torch.cuda.is_available():
        raise ExportError("device cuda needs a CUDA GPU, and torch sees none here")
    if device == "cpu" and precision != "fp32":
        raise ExportError(
            f"precision {precision} is for device cuda (the 2:4 kernels); on the CPU the sparse "
            "kernels compute float32"
        )
    return torch.device(device)


@torch.no_grad()
def write(
    source: SparseModel,
    folder: ExportDir,
    batch_sizes: tuple[int, ...],
    threads: int | None,
    device: str = "cpu",
    precision: str = "fp32",
) -> dict[str, Any]:
    """Choose, build and save the inference model; return the manifest entries."""
    started = time.perf_counter()
    where, dtype = check_device(device, precision), PRECISIONS[precision]
    dense = without_kernels(source.model()).to(where, dtype).eval()
    batches = {size: example_batch(source, dense, size).to(where) for size in batch_sizes}
    for size, batch in batches.items():
        if batch.is_floating_point():
            batches[size] = batch.to(dtype)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        expected = {size: _reference_logits(dense, b, source) for size, b in batches.items()}
        pruned = {name.rsplit(".", 1)[0] for name in source.masks}
        layers = {n: m for n, m in eligible_layers(dense).items() if n in pruned}
        covered = set(layers) | {
            f"{n}.out_proj" for n in layers if layer_kind(layers[n]) == "MultiheadAttention"
        }
        runs = {size: (lambda model, b=b: model(b)) for size, b in batches.items()}
        chosen = sparse_inference_model(dense, layers, runs)
        sparse, choices = chosen.model, chosen.choices
        got = {size: logits_of(sparse(b)) for size, b in batches.items()}
    finally:
        torch.set_num_threads(previous_threads)
    difference = max(float((got[s] - expected[s]).abs().max()) for s in batches)
    close = all(
        torch.allclose(got[s], expected[s], **TOLERANCE)
        if dtype == torch.float32
        else agrees(got[s], expected[s])
        for s in batches
    )
    if not close:
        raise ExportError(
            f"{source.origin}: the sparse model's outputs differ from the dense model's by up "
            f"to {difference:.3g}, beyond {precision} tolerance; nothing was written"
        )
    state = {k: v.detach().cpu().contiguous().clone() for k, v in sparse.state_dict().items()}
    save_file(state, str(folder.weights), metadata={"format": "pt"})
    entries: dict[str, Any] = {
        "batch_sizes": list(batch_sizes),
        "threads": threads if threads is not None else previous_threads,
        "sample_shape": list(source.sample_shape or ()),
        "input_dtype": source.input_dtype,
        "device": device,
        "precision": precision,
        "machine": _machine(where),
        "layers": {c.name: _layer_entry(c, dense) for c in choices},
        "dense_blocks": {route.name: route.to_list() for route in chosen.routes},
        "no_kernel": {name: _kind(dense, name) for name in sorted(pruned - covered)},
        "memory": _memory(dense, sparse, choices),
        "max_abs_diff": difference,
        "choice_seconds": time.perf_counter() - started,
    }
    if source.transformers_config is not None:  # not as config.json: transformers cannot load
        entries["transformers_config"] = source.transformers_config  # CSR layers
    if "2:4" in source.patterns.values():
        entries["semi_structured"] = (
            {c.name: c.problem for c in choices if c.problem}  # why a layer stayed dense
            if where.type == "cuda"
            else SEMI_STRUCTURED_SKIPPED
        )
    return entries


def _layer_entry(choice: LayerChoice, dense: nn.Module) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "kind": choice.kind,
        "kernel": choice.kernel,
        "weight_shape": list(layer_weights(dense.get_submodule(choice.name))[0].shape),
        "density": choice.density,
        "dispatch": [b.to_dict() for b in choice.batches],
    }
    if choice.contiguous:
        entry["contiguous_output"] = True
    if choice.timing is not None:
        entry.update(choice.timing.to_dict())
    if choice.reverted_by is not None:
        entry["reverted_by"] = choice.reverted_by or "the model"
    return entry


def _memory(dense: nn.Module, sparse: nn.Module, choices: list[LayerChoice]) -> dict[str, int]:
    """Bytes of the pruned layers' weights: dense; as the sparse model holds them (CSR tensors,
    and the weights of layers kept dense); and the dense copies its dispatch keeps beside CSR
    (of layers, and of blocks routed dense at some batch sizes)."""
    dense_bytes = held = copies = 0
    for choice in choices:
        weights = layer_weights(dense.get_submodule(choice.name))
        dense_bytes += sum(w.numel() * w.element_size() for w in weights)
        twin = sparse.get_submodule(choice.name)
        if isinstance(twin, CsrLayer | CsrAttention):
            tensors = [*twin.named_parameters(), *twin.named_buffers()]
            held += sum(t.numel() * t.element_size() for n, t in tensors if "weight_" in n)
            copies += twin.dense_copy_bytes()
        else:
            held += sum(w.numel() * w.element_size() for w in weights)
    blocks = sum(bytes_of(route[0]) for m in sparse.modules() if (route := dense_route(m)))
    return {
        "dense_weights": dense_bytes,
        "sparse_model_weights": held,
        "dense_copies": copies,
        "dense_blocks": blocks,
    }


def _kind(model: nn.Module, name: str) -> str:
    """The type name of the module `name`, or "parameter" for a weight used functionally."""
    try:
        return type(model.get_submodule(name)).__name__
    except AttributeError:
        return "parameter"


def _reference_logits(model: nn.Module, batch: torch.Tensor, source: SparseModel) -> torch.Tensor:
    """The masked dense model's logits on the timing batch; a batch the model cannot run on
    is refused in one paragraph."""
    try:
        return logits_of(model(batch))
    except (RuntimeError, TypeError, ValueError, IndexError) as error:
        first = first_line(error)
        raise ExportError(
            f"{source.origin}: the model does not run on a timing batch of shape "
            f"{tuple(batch.shape)} ({source.input_dtype}): {first}. Pass the shape and type of "
            "one sample (--input-shape, --input-dtype; input_shape=, input_dtype=)"
        ) from None


def load(files: ExportDir, manifest: dict[str, Any], model: nn.Module) -> nn.Module:
    """`model` (the exported architecture) with its CSR and 2:4 layers in place and every
    tensor loaded; in eval mode. A 2:4 layer computes on its kernel once the model is on a
    GPU that has one, in the exported precision (`model.to("cuda")`), and dense before."""
    folder = files.path
    _warn_if_elsewhere(manifest, folder)
    state = load_file(str(files.weights))
    blocks = {name: copy.deepcopy(_block(model, name, folder)) for name in manifest["dense_blocks"]}
    for name, entry in manifest["layers"].items():
        if entry["kernel"] not in ("csr", "semi_structured"):
            continue
        try:
            module = model.get_submodule(name)
        except AttributeError:
            module = None
        kind = layer_kind(module)
        shape = tuple(layer_weights(module)[0].shape) if kind is not None else ()
        if kind != entry["kind"] or shape != tuple(entry["weight_shape"]):
            raise ExportError(
                f"the model has no {entry['kind']} {name!r} with a weight of shape "
                f"{tuple(entry['weight_shape'])}, which the export in {folder} replaced; "
                "pass an instance of the exported model's architecture"
            )
        if entry["kernel"] == "semi_structured":
            replace_module(model, name, SemiStructuredLinear.of(module))
            continue
        dispatch = Dispatch.of([(int(b["columns"]), str(b["kernel"])) for b in entry["dispatch"]])
        contiguous = bool(entry.get("contiguous_output", False))
        replace_module(model, name, csr_twin(module, dispatch, contiguous, state, name))
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as error:
        first = first_problem(error)
        raise ExportError(
            f"the export in {folder} does not fit this model: {first}; pass an instance of the "
            "exported model's architecture"
        ) from None
    for name, layer in model.named_modules():
        if isinstance(layer, CsrLayer):
            _check_structure(layer, name, folder)
    without_fused_paths(model)
    for name, dense in blocks.items():  # a dense copy of the block, for the batches it was faster
        block = model.get_submodule(name)
        dense.load_state_dict(dense_state(block))
        routes = [(int(e["elements"]), str(e["route"])) for e in manifest["dense_blocks"][name]]
        route_dense_at(block, dense, Dispatch.of(routes))
    return model.eval()


def _block(model: nn.Module, name: str, folder: Path) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ExportError(
            f"the model has no module {name!r}, which the export in {folder} computes dense at "
            "some batch sizes; pass an instance of the exported model's architecture"
        ) from None


def _warn_if_elsewhere(manifest: dict[str, Any], folder: Path) -> None:
    """Warn when this machine or thread count is not the one the kernels were chosen on."""
    device = torch.device(manifest.get("device", "cpu"))
    here = _machine(device) if device.type == "cpu" or torch.cuda.is_available() else {}
    there = manifest.get("machine", {})
    differ = [f"{key} {there.get(key)} there, {value} here" for key, value in here.items()
              if there.get(key) != value]  # fmt: skip
    threads = torch.get_num_threads()
    if manifest.get("threads") != threads:
        differ.append(f"torch threads {manifest.get('threads')} there, {threads} here")
    if differ:
        warnings.warn(
            f"the export in {folder} chose its kernels on another setup ({'; '.join(differ)}); "
            "a layer may be slower here than its dense form: export again where it runs, with "
            "--threads set to the threads it will run with",
            MachineWarning,
            stacklevel=3,
        )


def _check_structure(layer: CsrLayer, name: str, folder: Path) -> None:
    """Refuse index buffers that do not describe a matrix of the layer's shape (the sparse
    kernels read them unchecked)."""
    try:
        torch._validate_sparse_csr_tensor_args(
            layer.weight_crow_indices,
            layer.weight_col_indices,
            layer.weight_values,
            layer.weight_csr().shape,
        )
    except RuntimeError as error:
        first = first_line(error, "invalid")
        raise ExportError(
            f"the export in {folder} is damaged: the CSR structure of {name} is invalid "
            f"({first}); export again"
        ) from None
