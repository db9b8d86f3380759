"""One data-parallel rank of a test run: train, then save this rank's weights and masks.

Launched by tests/e2e/test_ddp.py as `python -m torch.distributed.run --nproc-per-node 2
ddp_worker.py RECIPE OUT [KEY=VALUE ...]`; the run itself writes only from rank 0, the per-rank dumps are
for the test to compare.
"""

import sys
from pathlib import Path

import torch

from acdc_recipe.language.loading import load_recipe, parse_set_args
from acdc_recipe.trainer.loop import close, fit, prepare

recipe, out = load_recipe(sys.argv[1], parse_set_args(sys.argv[3:])), Path(sys.argv[2])
session = prepare(recipe, out, device="cpu")
try:
    fit(session)
    dump = {"weights": session.model.state_dict(), "masks": list(session.runtime.masks)}
    torch.save(dump, out / f"rank{session.context.rank}.pt")
finally:
    close(session)
