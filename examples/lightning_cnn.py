"""AC/DC in a Lightning Trainer: a small CNN on synthetic 16x16 images (each class lights up
its own band of rows). Under a minute on a laptop CPU.

    pip install 'acdc-recipe[lightning]'
    python examples/lightning_cnn.py [output folder]

The acdc lines are marked: one callback, given to the Trainer. The schedule is in epochs; the
Trainer's max_epochs must match it (the callback says so otherwise).
"""

import sys
import tempfile
from pathlib import Path

import lightning
import torch
from torch import nn
from torch.nn import functional as F

import acdc_recipe  # acdc
from acdc_recipe.integrations.lightning import AcdcCallback  # acdc


class Classifier(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * 16, 4),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_index):
        images, labels = batch
        loss = F.cross_entropy(self(images), labels)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def images(count: int = 512) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (count,), generator=g)
    x = torch.randn(count, 1, 16, 16, generator=g) * 0.5
    for row in range(4):
        x[labels == row, :, 4 * row : 4 * row + 4, :] += 1.0
    return torch.utils.data.TensorDataset(x, labels)


def main(output: str) -> None:
    # All cores but one, as `acdc run` sets it: torch's default (every core) makes each op wait
    # for every thread, 10-23x slower whenever anything else uses a core.
    torch.set_num_threads(acdc_recipe.default_threads())  # acdc
    print(f"torch threads: {torch.get_num_threads()}")
    lightning.seed_everything(0, verbose=False)
    # 12 epochs: D0-1, S2-3, D4-5, S6-7, D8-9, S10-11 (the first conv, 1 input channel, kept dense)
    recipe = acdc_recipe.acdc(0.9, epochs=12, warmup=2, sparse=2, dense=2, last_dense=2,
                              final_sparse=2, rules=[{"match": "net.0", "dense": True}])  # acdc  # fmt: skip
    acdc = AcdcCallback(recipe, example_inputs=torch.zeros(1, 1, 16, 16))  # acdc
    trainer = lightning.Trainer(max_epochs=12, callbacks=[acdc], default_root_dir=output,  # acdc
                                accelerator="cpu", enable_progress_bar=False,
                                enable_model_summary=False, gradient_clip_val=1.0)  # fmt: skip
    data = torch.utils.data.DataLoader(images(), batch_size=32, shuffle=True)
    module = Classifier()
    trainer.fit(module, data)

    with torch.no_grad():
        x, y = images(256).tensors
        accuracy = float((module(x).argmax(1) == y).float().mean())
    print(f"sparse model accuracy {accuracy:.3f}; per-layer sparsity:")
    for param, weight in zip(acdc.compiled.params, acdc.compiled.parameters, strict=True):
        print(f"  {param.name:14s} {float((weight == 0).float().mean()):.3f}")
    assert (Path(output) / "sparse" / "model.safetensors").is_file()
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="acdc-lightning-"))
