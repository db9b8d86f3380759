"""The `torch-sparse` format: a runnable inference model, each layer on its measured kernel.

Export times every pruned Linear, Conv2d and self-attention on the input it receives from a
batch of `batch_size` samples, with `threads` torch threads (`kernels.inference`), and replaces
the layers where a CSR product is faster with their twins (`CsrLayer`, `CsrAttention`); every
other layer stays as it was. With `device` "cuda" (and `precision` fp16 or bf16, which the
2:4 kernels take) it times the model on the GPU instead, and the 2:4 Linears that are faster
on semi-structured kernels become `SemiStructuredLinear`s.
The sparse model's state dict goes to model.safetensors (CSR layers as their index and value
buffers, nothing dense); manifest.json lists the replaced layers, the timings behind every
choice, the machine, and the largest difference between the sparse and the masked dense
model's outputs on that batch. `load` rebuilds the model from the user's own architecture.
"""

from __future__ import annotations

import os
import platform
import time
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
from acdc_recipe.runtime.kernels.inference import (
    PRODUCTS,
    CsrLayer,
    csr_twin,
    eligible_layers,
    layer_kind,
    layer_weights,
    replace_module,
    sparse_inference_model,
    without_nested_tensors,
)
from acdc_recipe.runtime.kernels.semi_structured import agrees
from acdc_recipe.runtime.kernels.semi_structured_layer import SemiStructuredLinear
from acdc_recipe.runtime.kernels.training import without_kernels

TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # fp32: sums in another order
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SEMI_STRUCTURED_SKIPPED = (
    "2:4 semi-structured kernels (torch.sparse.to_sparse_semi_structured) run on CUDA GPUs "
    "of compute capability 8.0 or newer only; this export runs on the CPU, so 2:4 layers take "
    "the same CSR-or-dense choice as any other (export with --device cuda --precision bf16 on "
    "such a GPU)"
)


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
    batch_size: int,
    threads: int | None,
    device: str = "cpu",
    precision: str = "fp32",
) -> dict[str, Any]:
    """Choose, build and save the inference model; return the manifest entries."""
    started = time.perf_counter()
    where, dtype = check_device(device, precision), PRECISIONS[precision]
    dense = without_kernels(source.model()).to(where, dtype).eval()
    batch = example_batch(source, dense, batch_size).to(where)
    if batch.is_floating_point():
        batch = batch.to(dtype)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        expected = _reference_logits(dense, batch, source)
        pruned = {name.rsplit(".", 1)[0] for name in source.masks}
        layers = {n: m for n, m in eligible_layers(dense).items() if n in pruned}
        covered = set(layers) | {
            f"{n}.out_proj" for n in layers if layer_kind(layers[n]) == "MultiheadAttention"
        }
        sparse, choices = sparse_inference_model(dense, layers, lambda model: model(batch))
        got = logits_of(sparse(batch))
    finally:
        torch.set_num_threads(previous_threads)
    difference = float((got - expected).abs().max())
    close = (
        torch.allclose(got, expected, **TOLERANCE)
        if dtype == torch.float32
        else agrees(got, expected)
    )
    if not close:
        raise ExportError(
            f"{source.origin}: the sparse model's outputs differ from the dense model's by up "
            f"to {difference:.3g}, beyond {precision} tolerance; nothing was written"
        )
    state = {k: v.detach().cpu().contiguous().clone() for k, v in sparse.state_dict().items()}
    save_file(state, str(folder.weights), metadata={"format": "pt"})
    entries: dict[str, Any] = {
        "batch_size": batch_size,
        "threads": threads if threads is not None else previous_threads,
        "sample_shape": list(source.sample_shape or ()),
        "device": device,
        "precision": precision,
        "machine": _machine(where),
        "layers": {
            c.name: {
                "kind": c.kind,
                "kernel": c.kernel,
                "weight_shape": list(layer_weights(dense.get_submodule(c.name))[0].shape),
                "density": c.density,
                **(c.timing.to_dict() if c.timing is not None else {}),
                **({"product": c.product} if c.kernel == "csr" else {}),
                **({"contiguous_output": True} if c.contiguous else {}),
                **({"product_ms": c.product_ms} if c.product_ms is not None else {}),
                **(
                    {"reverted_by": c.reverted_by or "the model"}
                    if c.reverted_by is not None
                    else {}
                ),
            }
            for c in choices
        },
        "no_kernel": {name: _kind(dense, name) for name in sorted(pruned - covered)},
        "max_abs_diff": difference,
        "choice_seconds": time.perf_counter() - started,
    }
    if "2:4" in source.patterns.values():
        entries["semi_structured"] = (
            {c.name: c.problem for c in choices if c.problem}  # why a layer stayed dense
            if where.type == "cuda"
            else SEMI_STRUCTURED_SKIPPED
        )
    return entries


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
    state = load_file(str(files.weights))
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
        product = _product(entry, name, folder)
        # before `product` was recorded, every CSR layer's output was contiguous
        contiguous = bool(entry.get("contiguous_output", "product" not in entry))
        replace_module(model, name, csr_twin(module, product, contiguous, state, name))
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
    without_nested_tensors(model)
    return model.eval()


def _product(entry: dict[str, Any], name: str, folder: Path) -> str:
    """The product a CSR layer was chosen with; `mm` for an export from before there were
    two."""
    product = entry.get("product", "mm")
    if product not in PRODUCTS:
        raise ExportError(
            f"the export in {folder} names an unknown product {product!r} for {name} (one of "
            f"{', '.join(PRODUCTS)}); export again with this version"
        )
    return product


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
