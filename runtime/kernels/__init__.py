"""Sparse kernels for masked layers, shared by sparse training and export.

A masked Linear or Conv2d is one matrix product `W X` (`forms.py`); with `W` in CSR over the
mask (`csr.py`) its forward, grad-input and grad-weight run on PyTorch's own kernels over that
structure (`function.py`: `embedding_bag` as the CSR product, `sampled_addmm`). Sparse training attaches `SparseKernels` (`training.py`), which chooses per
layer, by timing both paths (`timing.py`), whether a sparse phase computes sparse; export
builds inference layers (`csr_layer.py`, `attention.py`) that dispatch each call on its batch
size, as `inference.py` timed them, and routes blocks whose fused path they would lose to a
dense copy where that is faster (`dense_routes.py`). On CUDA, 2:4 Linears use semi-structured kernels (`semi_structured.py`, and
`semi_structured_layer.py` for export) the same way.
"""

from acdc_recipe.runtime.kernels.csr import CsrOperands, build_operands, csr_from_mask
from acdc_recipe.runtime.kernels.forms import Conv2dForm, Form, LinearForm, form_of
from acdc_recipe.runtime.kernels.function import SparseLayerFunction, sparse_forward
from acdc_recipe.runtime.kernels.layer import KernelLayer
from acdc_recipe.runtime.kernels.timing import SPARSE_MARGIN, KernelTiming, time_paths
from acdc_recipe.runtime.kernels.training import KernelSetupError, SparseKernels

__all__ = [
    "SPARSE_MARGIN",
    "Conv2dForm",
    "CsrOperands",
    "Form",
    "KernelLayer",
    "KernelSetupError",
    "KernelTiming",
    "LinearForm",
    "SparseKernels",
    "SparseLayerFunction",
    "build_operands",
    "csr_from_mask",
    "form_of",
    "sparse_forward",
    "time_paths",
]
