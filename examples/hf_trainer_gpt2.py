"""AC/DC in a Hugging Face Trainer: a tiny GPT-2 (from its config, nothing downloaded) learns
the next byte of the Python standard library's source. Under a minute on a laptop CPU.

    pip install 'acdc-recipe[hf]'
    python examples/hf_trainer_gpt2.py [output folder]

The acdc lines are marked; everything else is an ordinary Trainer script. GPT-2's Conv1D
projections are pruned, its tied input/output embedding is not.
"""

import sys
import sysconfig
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import acdc_recipe  # acdc
from acdc_recipe.integrations.huggingface import AcdcCallback  # acdc


class PythonBytes(torch.utils.data.Dataset):
    """Windows of 64 bytes of the standard library's .py files; labels are the inputs (the
    model shifts them for next-token prediction)."""

    def __init__(self, length: int = 64, windows: int = 512) -> None:
        files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
        data = b"".join(path.read_bytes() for path in files[:40])[: length * windows]
        self.ids = torch.frombuffer(bytearray(data), dtype=torch.uint8).long().view(-1, length)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main(output: str) -> None:
    # All cores but one, as `acdc run` sets it: torch's default (every core) makes each op wait
    # for every thread, 10-23x slower whenever anything else uses a core.
    torch.set_num_threads(acdc_recipe.default_threads())  # acdc
    print(f"torch threads: {torch.get_num_threads()}")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=256,
                        bos_token_id=None, eos_token_id=None)  # fmt: skip
    model = GPT2LMHeadModel(config)
    # 36 optimizer steps: dense 0-7, sparse 8-11, dense 12-15, sparse 16-19, dense 20-27, sparse 28-35
    recipe = acdc_recipe.acdc(0.8, epochs=36, warmup=8, sparse=4, dense=4, last_dense=8,
                              final_sparse=8, unit="step")  # acdc  # fmt: skip
    args = TrainingArguments(output_dir=output, max_steps=36, per_device_train_batch_size=16,
                             learning_rate=3e-3, logging_steps=12, save_strategy="no",
                             report_to="none", use_cpu=True, disable_tqdm=True, seed=0)  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=PythonBytes())
    acdc = AcdcCallback(trainer, recipe)  # acdc
    trainer.add_callback(acdc)  # acdc
    trainer.train()

    weights = acdc.compiled.parameters
    sparsity = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    print(f"pruned {len(weights)} Conv1D weights to {sparsity:.4f} sparsity; "
          f"tied embedding zeros: {int((model.transformer.wte.weight == 0).sum())}")  # fmt: skip
    print(f"dense twin: {Path(output) / 'dense'}, sparse model: {Path(output) / 'sparse'}")
    assert abs(sparsity - 0.8) < 1e-3 and (Path(output) / "sparse" / "config.json").is_file()
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="acdc-gpt2-"))
