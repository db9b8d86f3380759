"""AC/DC in a Hugging Face Trainer: a tiny BERT classifier (from its config, nothing
downloaded) on a synthetic task, which of two marker tokens a sequence holds more of. Under a
minute on a laptop CPU.

    pip install 'acdc-recipe[hf]'
    python examples/hf_trainer_bert.py [output folder]

The acdc lines are marked. BERT's Linear layers are pruned; its word, position and token-type
embeddings and its norms are not. The recipe is written out as YAML, as it would be in a file.
"""

import sys
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

import acdc_recipe  # acdc
from acdc_recipe.integrations.huggingface import AcdcCallback  # acdc

RECIPE = """
name: tiny-bert-acdc
sparsity: {target: 0.9, rules: [{match: classifier, dense: true}]}
schedule:
  unit: step
  phases: [{dense: 8}, {sparse: 4}, {dense: 4}, {sparse: 4}, {dense: 4}, {sparse: 8}]
train:
  model: {name: bert, input_shape: [32], input_dtype: int64}  # sizes the FLOPs figures
"""


class Markers(torch.utils.data.Dataset):
    def __init__(self, size: int = 512, length: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(3, 64, (size, length), generator=g)
        marks = torch.randint(1, 3, (size, 6), generator=g)
        self.ids[:, 1:7] = marks
        self.labels = ((marks == 1).sum(1) < 3).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def main(output: str) -> None:
    # All cores but one, as `acdc run` sets it: torch's default (every core) makes each op wait
    # for every thread, 10-23x slower whenever anything else uses a core.
    torch.set_num_threads(acdc_recipe.default_threads())  # acdc
    print(f"torch threads: {torch.get_num_threads()}")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                        intermediate_size=128, vocab_size=64, max_position_embeddings=32)  # fmt: skip
    model = BertForSequenceClassification(config)
    recipe = acdc_recipe.load_recipe_text(RECIPE)  # acdc
    args = TrainingArguments(output_dir=output, max_steps=32, per_device_train_batch_size=16,
                             learning_rate=1e-3, logging_steps=8, save_strategy="no",
                             report_to="none", use_cpu=True, disable_tqdm=True, seed=0)  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=Markers())
    acdc = AcdcCallback(trainer, recipe)  # acdc
    trainer.add_callback(acdc)  # acdc
    trainer.train()

    for param, weight in zip(acdc.compiled.params, acdc.compiled.parameters, strict=True):
        print(f"{param.name:50s} {float((weight == 0).float().mean()):.3f}")
    print(f"kept dense by the rule: {[p.name for p in acdc.compiled.dense]}")
    embeddings = [n for n, why in acdc.compiled.not_pruned.items() if why == "embedding"]
    print(f"embeddings, not pruned: {embeddings}")
    assert (Path(output) / "sparse" / "config.json").is_file()
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="acdc-bert-"))
