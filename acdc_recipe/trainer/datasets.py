"""What a data source returns: in-memory datasets and the bundle `acdc run` trains on."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from acdc_recipe.trainer.data_paths import DataError

__all__ = ["DataBundle", "DataError", "TensorData"]


class TensorData(Dataset):
    """An in-memory dataset of (inputs, labels) tensors that hands out whole batches at once."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        if len(inputs) != len(labels):
            raise DataError(f"{len(inputs)} inputs but {len(labels)} labels")
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.inputs[index], self.labels[index]


@dataclass(frozen=True)
class DataBundle:
    """Training and validation data, with what the model needs to know about them."""

    train: Dataset
    val: Dataset
    num_classes: int | None = None
    sample_shape: tuple[int, ...] | None = None
