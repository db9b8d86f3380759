"""AC/DC in a plain PyTorch loop: an MLP learning a random linear teacher, with gradient
clipping. A few seconds on a CPU; needs no extra. To resume, save `runtime.state_dict()` next
to the model's and the optimizer's and load it after attaching (docs/runtime.md).

    python examples/plain_loop.py

The acdc lines are marked: threads, compile, attach, the loop's end, and one call per step (two
when you clip).
"""

import torch
from torch import nn
from torch.nn import functional as F

import acdc_recipe  # acdc


def main() -> None:
    # All cores but one, as `acdc run` sets it: torch's default (every core) makes each op wait
    # for every thread, 10-23x slower whenever anything else uses a core.
    torch.set_num_threads(acdc_recipe.default_threads())  # acdc
    print(f"torch threads: {torch.get_num_threads()}")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 8)
    )
    teacher = nn.Linear(32, 8)
    # 24 epochs of 10 steps: D0-3, S4-5, D6-7, S8-9, D10-11, S12-13, D14-17, S18-23
    recipe = acdc_recipe.acdc(0.9, epochs=24, warmup=4, sparse=2, dense=2, last_dense=4,
                              final_sparse=6)  # acdc  # fmt: skip
    compiled = acdc_recipe.compile(model, recipe, example_inputs=torch.zeros(1, 32))  # acdc
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    runtime = acdc_recipe.attach(compiled, optimizer, steps_per_epoch=10)  # acdc

    while not runtime.finished:  # acdc: the schedule's 240 optimizer steps
        x = torch.randn(64, 32)
        y = teacher(x).argmax(1).detach()
        runtime.begin_step()  # acdc: phase actions before the forward pass
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        runtime.mask_gradients()  # acdc: only because we clip next
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()  # the runtime's hooks re-mask the weights here

    weights = compiled.parameters
    sparsity = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    with torch.no_grad():
        x = torch.randn(1024, 32)
        accuracy = float((model(x).argmax(1) == teacher(x).argmax(1)).float().mean())
    print(f"sparsity {sparsity:.4f} over {len(weights)} weight tensors, accuracy {accuracy:.3f}")
    print("phases:", ", ".join(f"{e.kind}@{e.step}" for e in runtime.history if hasattr(e, "kind")))
    assert abs(sparsity - 0.9) < 1e-3
    print("ok")


if __name__ == "__main__":
    main()
