"""AcdcCallback in transformers' Trainer: tiny GPT-2, BERT and ViT built from configs."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import transformers
from transformers import Trainer, TrainerCallback, TrainingArguments

from acdc_recipe.compiler import CompileError
from acdc_recipe.formats.checkpoint import CheckpointError
from acdc_recipe.integrations.attaching import IntegrationError
from acdc_recipe.integrations.huggingface import AcdcCallback
from acdc_recipe.language.schema import Recipe
from acdc_recipe.runtime import MasksComputed, PhaseStarted

from ..conftest import TOKEN_VOCAB, tiny_bert, tiny_gpt2, tiny_vit

# dense 0-2, sparse 3-5, dense 6-7, sparse 8-11 (optimizer steps)
PHASES = [{"dense": 3}, {"sparse": 3}, {"dense": 2}, {"sparse": 4}]


def recipe(phases=PHASES, unit="step", rules=(), shape=(16,), dtype="int64", **sparsity) -> Recipe:
    model = {"name": "hf", "input_shape": list(shape), "input_dtype": dtype}
    return Recipe.model_validate(
        {
            "name": "hf-test",
            "sparsity": {"target": 0.75, "rules": list(rules), **sparsity},
            "schedule": {"unit": unit, "phases": phases},
            "train": {"model": model},
        }
    )


class Samples(torch.utils.data.Dataset):
    """Random token sequences (language modelling or classification) or images."""

    def __init__(self, kind: str, size: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.kind = kind
        if kind == "image":
            self.inputs = torch.randn(size, 3, 16, 16, generator=g)
        else:
            self.inputs = torch.randint(0, TOKEN_VOCAB, (size, 16), generator=g)
        self.labels = torch.randint(0, 3, (size,), generator=g)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.kind == "lm":
            return {"input_ids": self.inputs[i], "labels": self.inputs[i]}
        key = "pixel_values" if self.kind == "image" else "input_ids"
        return {key: self.inputs[i], "labels": self.labels[i]}


class StepProbe(TrainerCallback):
    """Per optimizer step: after the Trainer clipped (on_pre_optimizer_step), the gradient norm
    and whether the pruned weights' gradients are 0; after the step (the engine's post-step
    hook has run), the masks' zero count and whether every pruned weight is exactly 0."""

    def __init__(self, acdc: AcdcCallback) -> None:
        self.acdc = acdc
        self.steps: list[dict] = []
        self.clipped: dict = {}

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        grads = [p.grad for p in kwargs["model"].parameters() if p.grad is not None]
        self.clipped = {
            "clipped_norm": float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        }
        masks = self.acdc.runtime.masks
        if masks is not None:
            weights = self.acdc.compiled.parameters
            self.clipped["pruned_grads_zero"] = all(
                bool((w.grad[m == 0] == 0).all()) for w, m in zip(weights, masks, strict=True)
            )

    def on_optimizer_step(self, args, state, control, **kwargs):
        runtime = self.acdc.runtime
        record = {
            "step": runtime.step - 1,
            "kind": runtime.timeline.phase_at(runtime.step - 1).kind,
        }
        record.update(self.clipped)
        if runtime.masks is not None:
            weights = self.acdc.compiled.parameters
            record["mask_zeros"] = sum(int((m == 0).sum()) for m in runtime.masks)
            record["pruned_all_zero"] = all(
                bool((w[m == 0] == 0).all()) for w, m in zip(weights, runtime.masks, strict=True)
            )
            record["weight_zeros"] = sum(int((w == 0).sum()) for w in weights)
        self.steps.append(record)


def train(
    tmp_path: Path,
    model,
    data: Samples,
    the_recipe: Recipe,
    resume: str | None = None,
    **arguments,
) -> tuple[Trainer, AcdcCallback, StepProbe]:
    settings = dict(
        output_dir=str(tmp_path),
        max_steps=12,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to="none",
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        data_seed=0,
    )
    evaluation = arguments.pop("eval_dataset", None)
    settings.update(arguments)
    trainer = Trainer(
        model=model, args=TrainingArguments(**settings), train_dataset=data, eval_dataset=evaluation
    )
    acdc = AcdcCallback(trainer, the_recipe)
    probe = StepProbe(acdc)
    trainer.add_callback(acdc)
    trainer.add_callback(probe)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, acdc, probe


def expected_prune(acdc: AcdcCallback, step: int) -> int:
    runtime = acdc.runtime
    index = runtime.timeline.phase_index_at(step)
    (update,) = acdc.compiled.plan.updates[index]
    return sum(group.prune for group in update.groups)


def assert_exact_sparse_steps(acdc: AcdcCallback, probe: StepProbe) -> None:
    sparse = [r for r in probe.steps if r["kind"] == "sparse"]
    assert [r["step"] for r in sparse] == [3, 4, 5, 8, 9, 10, 11]
    for record in sparse:
        assert record["mask_zeros"] == expected_prune(acdc, record["step"])
        assert record["pruned_all_zero"]
        assert record["weight_zeros"] >= record["mask_zeros"]
    assert [r for r in probe.steps if r["kind"] == "dense" and "mask_zeros" in r] == []


# (model builder, Samples kind, one sample's shape, its dtype in the recipe)
TINY_MODELS = [
    (tiny_gpt2, "lm", (16,), "int64"),
    (tiny_bert, "tokens", (16,), "int64"),
    (tiny_vit, "image", (3, 16, 16), "float"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("build", "kind", "shape", "dtype"), TINY_MODELS)
def test_every_sparse_step_is_exact(tmp_path, build, kind, shape, dtype) -> None:
    trainer, acdc, probe = train(tmp_path, build(), Samples(kind), recipe(shape=shape, dtype=dtype))
    assert_exact_sparse_steps(acdc, probe)
    assert acdc.runtime.step == trainer.state.global_step == 12
    assert acdc.compiled.dense_forward_flops > 0  # token ids / images sized the FLOPs
    # the dense twin (end of the last dense phase) and the sparse model, as save_pretrained folders
    dense = type(trainer.model).from_pretrained(tmp_path / "dense")
    sparse = type(trainer.model).from_pretrained(tmp_path / "sparse")
    final = dict(trainer.model.named_parameters())
    for name in acdc.compiled.plan.names:
        assert torch.equal(dict(sparse.named_parameters())[name], final[name].detach())
    assert sum(int((p == 0).sum()) for n, p in dense.named_parameters() if n in final) < sum(
        int((p == 0).sum()) for n, p in sparse.named_parameters() if n in final
    )


@pytest.mark.slow
def test_gpt2_conv1d_weights_are_pruned_and_its_tied_embedding_is_not(tmp_path) -> None:
    model = tiny_gpt2()
    wte = model.transformer.wte.weight
    _, acdc, _ = train(tmp_path, model, Samples("lm"), recipe())
    assert {p.op for p in acdc.compiled.params} == {"Conv1D"}
    assert all(p is not wte for p in acdc.compiled.parameters)
    assert int((wte == 0).sum()) == 0
    for weight in acdc.compiled.parameters:
        assert 0.0 < float((weight == 0).float().mean()) < 1.0
    _, acdc, _ = train(
        tmp_path / "tied",
        tiny_gpt2(),
        Samples("lm"),
        recipe(rules=[{"match": "lm_head", "include": True}]),
    )
    assert "transformer.wte.weight" in acdc.compiled.plan.names


@pytest.mark.slow
def test_masks_are_applied_before_max_grad_norm_clips(tmp_path) -> None:
    """After the Trainer clipped, pruned gradients are already 0 and the gradient's norm is
    exactly max_grad_norm: the clipping norm was the masked gradient's."""
    _, _, probe = train(tmp_path, tiny_gpt2(), Samples("lm"), recipe(), max_grad_norm=1e-3)
    sparse = [r for r in probe.steps if r["kind"] == "sparse"]
    assert len(sparse) == 7 and all(r["pruned_grads_zero"] for r in sparse)
    for record in probe.steps:
        assert record["clipped_norm"] == pytest.approx(1e-3, rel=1e-4), record


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", [4, 10])
def test_resume_from_a_trainer_checkpoint_mid_sparse_phase_is_bitwise_equal(tmp_path, checkpoint):
    data = Samples("lm")
    whole, _, _ = train(
        tmp_path / "whole", tiny_gpt2(), data, recipe(), save_strategy="steps", save_steps=2
    )
    folder = tmp_path / "whole" / f"checkpoint-{checkpoint}"
    assert (folder / "acdc_runtime.safetensors").is_file()
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    subprocess.run(["cp", "-r", str(folder), str(resumed_dir)], check=True)
    resumed, acdc, probe = train(
        resumed_dir, tiny_gpt2(seed=1), data, recipe(), resume=str(resumed_dir / folder.name)
    )
    assert probe.steps[0]["step"] == checkpoint
    assert probe.steps[0]["kind"] == "sparse" and probe.steps[0]["pruned_all_zero"]
    expected = whole.model.state_dict()
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    kinds = [type(e).__name__ for e in acdc.runtime.history]
    assert kinds.count("MasksComputed") == 2  # the history came back with the state


@pytest.mark.slow
def test_a_checkpoint_without_acdc_state_is_refused(tmp_path) -> None:
    data = Samples("lm")
    plain = Trainer(
        model=tiny_gpt2(),
        args=TrainingArguments(
            output_dir=str(tmp_path),
            max_steps=4,
            save_steps=4,
            report_to="none",
            use_cpu=True,
            per_device_train_batch_size=4,
            disable_tqdm=True,
        ),  # fmt: skip
        train_dataset=data,
    )
    plain.train()
    given = tmp_path / "checkpoint-4"
    with pytest.raises(CheckpointError) as error:
        train(tmp_path / "elsewhere", tiny_gpt2(), data, recipe(), resume=str(given))
    assert str(error.value).startswith(f"{given} holds no acdc_runtime.safetensors")


def phase_steps(acdc: AcdcCallback) -> tuple[list[int], list[int]]:
    history = acdc.runtime.history
    return (
        [e.step for e in history if isinstance(e, PhaseStarted)],
        [e.step for e in history if isinstance(e, MasksComputed)],
    )


@pytest.mark.slow
@pytest.mark.parametrize("accumulation", [2, 3])
def test_the_timeline_holds_under_gradient_accumulation(tmp_path, accumulation) -> None:
    """Epochs of 8 batches are ceil(8 / accumulation) optimizer steps, as the Trainer counts."""
    epochs = [{"dense": 1}, {"sparse": 1}, {"dense": 1}, {"sparse": 1}]
    per_epoch = -(-8 // accumulation)
    _, acdc, probe = train(
        tmp_path,
        tiny_gpt2(),
        Samples("lm"),
        recipe(epochs, unit="epoch"),
        max_steps=-1,
        num_train_epochs=4,
        gradient_accumulation_steps=accumulation,
    )
    assert phase_steps(acdc) == (
        [0, per_epoch, 2 * per_epoch, 3 * per_epoch],
        [per_epoch, 3 * per_epoch],
    )
    sparse = [r for r in probe.steps if r["kind"] == "sparse"]
    assert len(sparse) == 2 * per_epoch and all(r["pruned_all_zero"] for r in sparse)


@pytest.mark.slow
def test_max_steps_gives_the_same_timeline_as_epochs(tmp_path) -> None:
    epochs = [{"dense": 1}, {"sparse": 1}, {"dense": 1}, {"sparse": 1}]
    data = Samples("lm", size=16)  # 4 batches: 4 optimizer steps per epoch
    _, acdc, _ = train(tmp_path, tiny_gpt2(), data, recipe(epochs, unit="epoch"), max_steps=16)
    assert phase_steps(acdc) == ([0, 4, 8, 12], [4, 12])


def test_a_trainer_length_that_does_not_fit_the_schedule_is_refused(tmp_path) -> None:
    with pytest.raises(
        IntegrationError, match=r"run 10 optimizer steps.*schedules 12.*max_steps=12"
    ):
        train(tmp_path, tiny_gpt2(), Samples("lm"), recipe(), max_steps=10)
    epochs = [{"dense": 1}, {"sparse": 1}]
    with pytest.raises(IntegrationError, match=r"num_train_epochs=2\)"):
        train(
            tmp_path,
            tiny_gpt2(),
            Samples("lm"),
            recipe(epochs, unit="epoch"),
            max_steps=-1,
            num_train_epochs=3,
        )


@pytest.mark.slow
def test_phase_switches_and_sparsity_are_logged_through_the_trainer(tmp_path, capsys) -> None:
    trainer, acdc, _ = train(tmp_path, tiny_gpt2(), Samples("lm"), recipe())
    history = [h for h in trainer.state.log_history if any(k.startswith("acdc/") for k in h)]
    assert [(h["step"], h["acdc/sparse_phase"]) for h in history] == [
        (0, 0.0), (3, 1.0), (6, 0.0), (8, 1.0)]  # fmt: skip
    assert [h["acdc/target"] for h in history] == [0.0, 0.75, 0.0, 0.75]  # one entry a step
    names = acdc.compiled.plan.names
    for entry in history[1::2]:  # the mask computations: overall and per pruned weight
        assert entry["acdc/sparsity"] == pytest.approx(0.75, abs=1e-4)
        per_layer = [entry[f"acdc/sparsity/{name}"] for name in names]
        sizes = [p.numel for p in acdc.compiled.params]
        overall = sum(s * n for s, n in zip(per_layer, sizes, strict=True)) / sum(sizes)
        assert overall == pytest.approx(entry["acdc/sparsity"], abs=1e-9)
        masks = acdc.runtime.masks if entry is history[-1] else None
        if masks is not None:  # the last computation's masks are still applied
            outputs = [1 if p.input_axis == 0 else 0 for p in acdc.compiled.params]
            empty = sum(int((m.movedim(o, 0).flatten(1).sum(1) == 0).sum()) for m, o in zip(
                masks, outputs))  # fmt: skip
            assert entry["acdc/emptied_channels"] == empty
    printed = capsys.readouterr().out
    assert printed.count("acdc: recipe 'hf-test'") == 1
    assert f"{len(names)} prunable tensors" in printed


def test_a_rule_matching_nothing_in_the_model_is_a_compile_error(tmp_path) -> None:
    bad = recipe(rules=[{"match": "transformer.h.0.attn.c_atn", "dense": True}])
    with pytest.raises(CompileError, match=r"rule 0 .*Did you mean 'transformer.h.0.attn.c_attn'"):
        train(tmp_path, tiny_gpt2(), Samples("lm"), bad)


def test_a_model_that_is_not_a_module_and_a_missing_optimizer_are_refused(tmp_path) -> None:
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_steps=12)
    trainer = Trainer(model=tiny_gpt2(), args=args, train_dataset=Samples("lm"))
    acdc = AcdcCallback(trainer, recipe())
    state, control = transformers.TrainerState(max_steps=12), transformers.TrainerControl()
    with pytest.raises(
        IntegrationError, match="torch.nn.Module, but the trainer's model is a dict"
    ):
        acdc.on_train_begin(args, state, control, model={"not": "a model"}, optimizer=None)
    with pytest.raises(IntegrationError, match="the trainer has none yet"):
        acdc.on_train_begin(args, state, control, model=tiny_gpt2(), optimizer=None)
    with pytest.raises(IntegrationError, match="needs the transformers Trainer"):
        AcdcCallback(args, recipe())
    scaled = types.SimpleNamespace(fp16=True)
    with pytest.raises(IntegrationError, match=r"fp16=True.*loss scaler skips.*bf16"):
        acdc.on_train_begin(scaled, state, control, model=tiny_gpt2(), optimizer=None)


@pytest.mark.slow
def test_the_missing_extra_names_the_pip_command() -> None:
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import acdc_recipe\n"
        "try:\n"
        "    import acdc_recipe.integrations.huggingface\n"
        "except ImportError as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("MissingExtraError")
    assert "pip install 'acdc-recipe[hf]'" in out.stdout


def test_importing_the_package_imports_neither_trainer_library() -> None:
    code = (
        "import sys, acdc_recipe, acdc_recipe.integrations\n"
        "print(json.dumps([m for m in ('transformers', 'lightning', 'torch') if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json\n" + code], capture_output=True, text=True, timeout=120
    )
    assert json.loads(out.stdout) == []


@pytest.mark.slow
def test_the_sparse_model_is_saved_before_the_trainer_loads_its_best_checkpoint(tmp_path):
    """load_best_model_at_end loads an earlier checkpoint into the model before on_train_end;
    the saved sparse model is the one the schedule ended with."""
    trainer, acdc, _ = train(
        tmp_path, tiny_gpt2(), Samples("lm"), recipe(), eval_strategy="steps", eval_steps=2,
        save_strategy="steps", save_steps=2, load_best_model_at_end=True,
        metric_for_best_model="loss", greater_is_better=True,
        eval_dataset=Samples("lm", size=8, seed=1),
    )  # fmt: skip
    best = trainer.state.best_model_checkpoint
    assert best is not None and not best.endswith("-12")  # an earlier checkpoint won
    sparse = dict(type(trainer.model).from_pretrained(tmp_path / "sparse").named_parameters())
    final_masks = acdc.runtime.masks  # those of the last sparse phase, steps 8-11
    for name, mask in zip(acdc.compiled.plan.names, final_masks, strict=True):
        assert not sparse[name][mask == 0].any(), name  # zero exactly where the final mask prunes


class Stream(torch.utils.data.IterableDataset):
    """Samples without a length."""

    def __iter__(self):
        while True:
            yield from Samples("lm")


@pytest.mark.slow
def test_an_iterable_dataset_trains_a_schedule_written_in_steps(tmp_path):
    trainer, acdc, probe = train(tmp_path, tiny_gpt2(), Stream(), recipe())
    assert_exact_sparse_steps(acdc, probe)
    with pytest.raises(IntegrationError, match="schedule.unit: step"):
        train(tmp_path / "epochs", tiny_gpt2(), Stream(), recipe(unit="epoch"))


@pytest.mark.slow
def test_resume_from_a_checkpoint_outside_output_dir_reads_its_own_acdc_state(tmp_path):
    """train(resume_from_checkpoint=A/checkpoint-4) with output_dir B, where B holds a
    checkpoint-4 of another run: the state comes from A, and the run ends as A's did."""
    data = Samples("lm")
    whole, _, _ = train(
        tmp_path / "a", tiny_gpt2(), data, recipe(), save_strategy="steps", save_steps=2
    )
    train(tmp_path / "b", tiny_gpt2(seed=3), data, recipe(), save_strategy="steps", save_steps=2)
    resumed, _, probe = train(
        tmp_path / "b", tiny_gpt2(), data, recipe(), resume=str(tmp_path / "a/checkpoint-4")
    )
    assert probe.steps[0]["step"] == 4 and probe.steps[0]["pruned_all_zero"]
    expected = whole.model.state_dict()
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
