"""Digits whose reads fail after a while, as a disk or network file system can: a run must
stop with one paragraph that keeps what it has checkpointed."""

from acdc_recipe.language.train_config import DataSpec
from acdc_recipe.trainer.data import TensorData, load_digits


class FailingTensorData(TensorData):
    reads = 0

    def __getitems__(self, indices):
        FailingTensorData.reads += 1
        if FailingTensorData.reads > 30:
            raise OSError("read error on the data volume")
        return super().__getitems__(indices)


def failing_digits():
    bundle = load_digits(DataSpec())
    return FailingTensorData(bundle.train.inputs, bundle.train.labels), bundle.val
