"""`acdc run RECIPE|BUILD_DIR`: train a recipe end to end into a run directory."""

from __future__ import annotations

import argparse
import os
import subprocess
import traceback
from pathlib import Path

from acdc_recipe.cli.common import add_recipe_arguments, errors
from acdc_recipe.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="train a recipe (file, shipped name, or `acdc compile` folder)"
    )
    add_recipe_arguments(parser)
    parser.add_argument("--out", metavar="DIR", help="run directory (default: runs/<recipe name>)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest valid checkpoint in --out"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a previous run in --out (default: refuse)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override train.device")
    parser.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        metavar="N",
        help="data-parallel processes on this machine (DDP: gloo on CPU, NCCL on GPU)",
    )
    parser.set_defaults(handler=run)


def recipe_source(argument: str) -> str:
    """A build folder (holding recipe.yaml) stands for its resolved recipe."""
    folder = Path(argument)
    if folder.is_dir():
        if not (folder / "recipe.yaml").is_file():
            raise UserError(
                f"{folder} is a folder without recipe.yaml; give a recipe file, a shipped "
                "recipe name, or a folder written by `acdc compile -o`"
            )
        return str(folder / "recipe.yaml")
    return argument


def _relaunch(args: argparse.Namespace) -> int:
    """Re-run this command (minus --nproc-per-node) under torch.distributed.run."""
    from acdc_recipe.runtime.distributed import torchrun_command

    return subprocess.call(torchrun_command(args.nproc_per_node, ["run", *_argv_from(args)]))


def _argv_from(args: argparse.Namespace) -> list[str]:
    argv = [args.recipe]
    for item in args.overrides:
        argv += ["--set", item]
    for flag, value in (("--out", args.out), ("--device", args.device)):
        if value:
            argv += [flag, value]
    return argv + [flag for flag in ("--resume", "--overwrite") if getattr(args, flag[2:])]


def run(args: argparse.Namespace) -> int:
    from acdc_recipe.loading import load_recipe, parse_set_args

    if args.nproc_per_node < 1:
        raise UserError(f"--nproc-per-node must be at least 1, got {args.nproc_per_node}")
    recipe = load_recipe(recipe_source(args.recipe), parse_set_args(args.overrides))
    if args.nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:
        return _relaunch(args)
    from acdc_recipe.runtime.trainer import train

    try:
        train(recipe, args.out, resume=args.resume, device=args.device, overwrite=args.overwrite)
    except UserError:
        raise
    except Exception as error:  # a failure during training: one paragraph, exit 1
        if os.environ.get("ACDC_TRACEBACK"):
            traceback.print_exc()
        out = args.out or f"runs/{recipe.name}"
        errors.print(
            f"error: training failed: {type(error).__name__}: {error}. Checkpoints written so "
            f"far are in {out}; fix the cause and continue with `acdc run {args.recipe} --out "
            f"{out} --resume` (set ACDC_TRACEBACK=1 to see the traceback).",
            markup=False,
            highlight=False,
        )
        return 1
    return 0
