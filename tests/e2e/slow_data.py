"""Digits that take a moment per batch, so a test can kill a run at a chosen point."""

import time

from acdc_recipe.language.train_config import DataSpec
from acdc_recipe.trainer.data import TensorData, load_digits


class SlowTensorData(TensorData):
    def __getitems__(self, indices):
        time.sleep(0.03)
        return super().__getitems__(indices)


def slow_digits():
    bundle = load_digits(DataSpec())
    return SlowTensorData(bundle.train.inputs, bundle.train.labels), bundle.val
