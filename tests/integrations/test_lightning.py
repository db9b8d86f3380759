"""AcdcCallback in Lightning's Trainer: tiny GPT-2, BERT and ViT built from configs."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import lightning
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from acdc_recipe.compiler import CompileError
from acdc_recipe.integrations.attaching import IntegrationError
from acdc_recipe.integrations.lightning import AcdcCallback
from acdc_recipe.runtime import MasksComputed, PhaseStarted

from ..conftest import tiny_gpt2
from .test_huggingface import TINY_MODELS, Samples, recipe

# 4 optimizer steps per epoch (16 samples, batch 4): dense 0-2, sparse 3-8, dense 9-11, sparse 12-15
PHASES = [{"dense": 3}, {"sparse": 6}, {"dense": 3}, {"sparse": 4}]


class HFModule(lightning.LightningModule):
    """A transformers model trained on its own loss, as most Lightning users wrap one."""

    def __init__(self, model, optimizer=True) -> None:
        super().__init__()
        self.model = model
        self.with_optimizer = optimizer

    def training_step(self, batch, batch_index):
        return self.model(**batch).loss

    def configure_optimizers(self):
        if self.with_optimizer:
            return torch.optim.AdamW(self.parameters(), lr=1e-2)
        return None


class StepProbe(lightning.Callback):
    """Per optimizer step: before Lightning clips (after the acdc callback masked), whether the
    pruned gradients are 0; after the step, the mask zero count and the pruned weights."""

    def __init__(self, acdc: AcdcCallback) -> None:
        self.acdc = acdc
        self.steps: list[dict] = []
        self.before: dict = {}

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        masks = self.acdc.runtime.masks
        weights = self.acdc.compiled.parameters
        self.before = {"step": self.acdc.runtime.step}
        if masks is not None:
            self.before["pruned_grads_zero"] = all(
                bool((w.grad[m == 0] == 0).all()) for w, m in zip(weights, masks, strict=True)
            )

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        runtime = self.acdc.runtime
        if not self.before or runtime.step != self.before["step"] + 1:
            return  # an accumulation micro-step: no optimizer step yet
        record = {**self.before, "kind": runtime.timeline.phase_at(self.before["step"]).kind}
        if runtime.masks is not None:
            weights = self.acdc.compiled.parameters
            record["mask_zeros"] = sum(int((m == 0).sum()) for m in runtime.masks)
            record["pruned_all_zero"] = all(
                bool((w[m == 0] == 0).all()) for w, m in zip(weights, runtime.masks, strict=True)
            )
        self.steps.append(record)
        self.before = {}


def fit(
    tmp_path: Path,
    model,
    data,
    the_recipe,
    ckpt_path: str | None = None,
    callbacks=(),
    optimizer=True,
    **arguments,
):
    acdc = AcdcCallback(the_recipe, module="model")
    probe = StepProbe(acdc)
    settings = dict(
        max_epochs=4,
        accelerator="cpu",
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(callbacks),
        logger=CSVLogger(str(tmp_path)),
        gradient_clip_val=1e-3,
        deterministic=True,
    )
    settings.update(arguments)
    trainer = lightning.Trainer(callbacks=[acdc, probe, *callbacks], **settings)
    lightning.seed_everything(0, verbose=False)
    # shuffled per epoch from (seed, epoch): a resumed run sees the batches it would have seen
    # (Lightning does not keep the global RNG in its checkpoints)
    order = torch.utils.data.DistributedSampler(data, num_replicas=1, rank=0, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=4, sampler=order)
    trainer.fit(HFModule(model, optimizer), loader, ckpt_path=ckpt_path)
    return trainer, acdc, probe


@pytest.mark.slow
@pytest.mark.parametrize(("build", "kind", "shape", "dtype"), TINY_MODELS)
def test_every_sparse_step_is_exact(tmp_path, build, kind, shape, dtype) -> None:
    the_recipe = recipe(PHASES, shape=shape, dtype=dtype)
    trainer, acdc, probe = fit(tmp_path, build(), Samples(kind, size=16), the_recipe)
    sparse = [r for r in probe.steps if r["kind"] == "sparse"]
    assert [r["step"] for r in sparse] == [3, 4, 5, 6, 7, 8, 12, 13, 14, 15]
    for record in sparse:
        index = acdc.runtime.timeline.phase_index_at(record["step"])
        (update,) = acdc.compiled.plan.updates[index]
        assert record["mask_zeros"] == sum(g.prune for g in update.groups)
        assert record["pruned_all_zero"] and record["pruned_grads_zero"]
    assert acdc.runtime.step == trainer.global_step == 16
    final = dict(trainer.lightning_module.model.named_parameters())
    sparse_model = type(final and trainer.lightning_module.model).from_pretrained(
        tmp_path / "sparse"
    )
    for name in acdc.compiled.plan.names:
        assert torch.equal(dict(sparse_model.named_parameters())[name], final[name].detach())
    assert (tmp_path / "dense" / "config.json").is_file()


@pytest.mark.slow
def test_gpt2_conv1d_is_pruned_not_its_tied_embedding(tmp_path) -> None:
    model = tiny_gpt2()
    _, acdc, _ = fit(tmp_path, model, Samples("lm", size=16), recipe(PHASES))
    assert {p.op for p in acdc.compiled.params} == {"Conv1D"}
    assert int((model.transformer.wte.weight == 0).sum()) == 0


@pytest.mark.slow
def test_resume_from_a_checkpoint_mid_sparse_phase_is_bitwise_equal(tmp_path) -> None:
    data = Samples("lm", size=16)
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, save_top_k=-1)
    whole, _, _ = fit(tmp_path / "whole", tiny_gpt2(), data, recipe(PHASES), callbacks=[saver])
    (checkpoint,) = (tmp_path / "ckpt").glob("epoch=0-step=4.ckpt")  # step 4: inside S3-8
    resumed, acdc, probe = fit(
        tmp_path / "resumed", tiny_gpt2(seed=1), data, recipe(PHASES), ckpt_path=str(checkpoint)
    )
    assert probe.steps[0]["step"] == 4 and probe.steps[0]["kind"] == "sparse"
    expected = whole.lightning_module.state_dict()
    for name, tensor in resumed.lightning_module.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert [type(e).__name__ for e in acdc.runtime.history].count("MasksComputed") == 2


@pytest.mark.slow
@pytest.mark.parametrize("accumulation", [2, 3])
def test_the_timeline_holds_under_gradient_accumulation(tmp_path, accumulation) -> None:
    epochs = [{"dense": 1}, {"sparse": 1}, {"dense": 1}, {"sparse": 1}]
    per_epoch = -(-8 // accumulation)  # 8 batches per epoch
    _, acdc, probe = fit(
        tmp_path,
        tiny_gpt2(),
        Samples("lm", size=32),
        recipe(epochs, unit="epoch"),
        accumulate_grad_batches=accumulation,
    )
    history = acdc.runtime.history
    assert [e.step for e in history if isinstance(e, PhaseStarted)] == [
        0, per_epoch, 2 * per_epoch, 3 * per_epoch
    ]  # fmt: skip
    assert [e.step for e in history if isinstance(e, MasksComputed)] == [per_epoch, 3 * per_epoch]
    sparse = [r for r in probe.steps if r["kind"] == "sparse"]
    assert len(sparse) == 2 * per_epoch and all(r["pruned_all_zero"] for r in sparse)


@pytest.mark.slow
def test_phase_switches_and_sparsity_reach_the_loggers(tmp_path) -> None:
    trainer, _, _ = fit(tmp_path, tiny_gpt2(), Samples("lm", size=16), recipe(PHASES))
    metrics = Path(trainer.logger.log_dir) / "metrics.csv"
    lines = metrics.read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]
    logged = [(int(r["step"]), float(r["acdc/sparsity"])) for r in rows if r.get("acdc/sparsity")]
    assert [step for step, _ in logged] == [3, 12]
    assert all(value == pytest.approx(0.75, abs=1e-4) for _, value in logged)


def test_the_trainer_length_must_fit_the_schedule(tmp_path) -> None:
    with pytest.raises(
        IntegrationError, match=r"run 12 optimizer steps.*schedules 16.*max_steps=16"
    ):
        fit(tmp_path, tiny_gpt2(), Samples("lm", size=16), recipe(PHASES), max_epochs=3)


def test_bad_setups_are_refused_with_one_message(tmp_path) -> None:
    data = Samples("lm", size=16)
    bad_rule = recipe(PHASES, rules=[{"match": "transformer.h.9.mlp", "dense": True}])
    with pytest.raises(CompileError, match="rule 0 .*matches no layer"):
        fit(tmp_path, tiny_gpt2(), data, bad_rule)
    with pytest.raises(IntegrationError, match="no optimizer holding them"):
        fit(tmp_path, tiny_gpt2(), data, recipe(PHASES), optimizer=False)
    callback = AcdcCallback(recipe(PHASES), module="model.config")
    with pytest.raises(
        IntegrationError, match="no submodule 'model.config', or it is not a torch.nn.Module"
    ):
        callback.on_train_start(None, HFModule(tiny_gpt2()))
    scaled = types.SimpleNamespace(precision="16-mixed")
    with pytest.raises(IntegrationError, match=r"precision='16-mixed'.*bf16"):
        AcdcCallback(recipe(PHASES)).on_train_start(scaled, HFModule(tiny_gpt2()))


@pytest.mark.slow
def test_the_missing_extra_names_the_pip_command() -> None:
    code = (
        "import sys; sys.modules['lightning'] = None\n"
        "try:\n"
        "    import acdc_recipe.integrations.lightning\n"
        "except ImportError as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("MissingExtraError"), out.stderr
    assert "pip install 'acdc-recipe[lightning]'" in out.stdout
