"""`acdc run RECIPE|BUILD_DIR`: train a recipe end to end into a run directory."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import traceback
from pathlib import Path

from acdc_recipe.cli.common import add_recipe_arguments, errors
from acdc_recipe.errors import UserError
from acdc_recipe.formats.run_dir import BuildDir, RunDir
from acdc_recipe.trainer.data_paths import check_data_paths


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="train a recipe (file, shipped name, or `acdc compile` folder)"
    )
    add_recipe_arguments(
        parser,
        metavar="RECIPE|BUILD_DIR",
        help="a recipe file, the name of a shipped recipe, or a folder written by `acdc compile -o`",
    )
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
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch threads (default: every core this process may use but one); results "
        "differ in the last bits between thread counts",
    )
    parser.add_argument(
        "--log-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="off a terminal, print a step line (loss, lr, samples/s) this often (default 10)",
    )
    parser.set_defaults(handler=run)


def recipe_source(argument: str) -> str:
    """A build folder (holding recipe.yaml) stands for its resolved recipe."""
    build = BuildDir(Path(argument))
    if build.path.is_dir():
        if not build.recipe.is_file():
            raise UserError(
                f"{build.path} is a folder without {build.recipe.name}; give a recipe file, a "
                "shipped recipe name, or a folder written by `acdc compile -o`"
            )
        return str(build.recipe)
    return argument


def _relaunch(args: argparse.Namespace) -> int:
    """Re-run this command (minus --nproc-per-node) as data-parallel workers; print the
    workers' error once (user errors exit 2, other failures 1)."""
    from torch.distributed.elastic.multiprocessing import SignalException

    from acdc_recipe.trainer.launch import launch_workers

    try:
        result = launch_workers(args.nproc_per_node, ["run", *_argv_from(args)])
    except SignalException as stop:  # Ctrl-C / SIGTERM: the workers have been stopped
        print("interrupted", file=sys.stderr)
        return 128 + int(stop.sigval)
    if result.message:
        print(result.message, file=sys.stderr)
    return result.exit_code


def _argv_from(args: argparse.Namespace) -> list[str]:
    argv = [args.recipe]
    for item in args.overrides:
        argv += ["--set", item]
    for flag, value in (("--out", args.out), ("--device", args.device)):
        if value:
            argv += [flag, value]
    argv += ["--log-every", str(args.log_every)]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    return argv + [flag for flag in ("--resume", "--overwrite") if getattr(args, flag[2:])]


def _resume_command(args: argparse.Namespace, out: str, *extra: str) -> str:
    """The shell command that continues this run from its newest checkpoint (with `extra`
    `--set` values in place of the run's own for the same keys)."""
    replaced = {item.partition("=")[0].strip() for item in extra}
    kept = [item for item in args.overrides if item.partition("=")[0].strip() not in replaced]
    sets = [word for item in (*kept, *extra) for word in ("--set", item)]
    flags = ["--device", args.device] if args.device else []
    flags += ["--threads", str(args.threads)] if args.threads is not None else []
    world_size = max(args.nproc_per_node, int(os.environ.get("WORLD_SIZE", "1")))
    flags += ["--nproc-per-node", str(world_size)] if world_size > 1 else []
    return shlex.join(["acdc", "run", args.recipe, *sets, "--out", out, *flags, "--resume"])


def run(args: argparse.Namespace) -> int:
    """Train the recipe (or launch its data-parallel workers). In a worker started by
    `--nproc-per-node`, a user error or an interrupt goes to the launcher, which prints each
    distinct paragraph once, instead of every rank printing it."""
    from acdc_recipe.trainer.launch import report_worker_error

    try:
        return _train_or_launch(args)
    except UserError as error:
        if report_worker_error(f"error: {error}", 2):
            return 2
        raise
    except KeyboardInterrupt:
        if report_worker_error("interrupted", 130):
            return 130
        raise


def _train_or_launch(args: argparse.Namespace) -> int:
    from acdc_recipe.language.loading import dump_recipe, load_recipe, parse_set_args

    if args.nproc_per_node < 1:
        raise UserError(f"--nproc-per-node must be at least 1, got {args.nproc_per_node}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    if args.log_every < 0:
        raise UserError(f"--log-every must be 0 or more seconds, got {args.log_every:g}")
    source = recipe_source(args.recipe)
    recipe = load_recipe(source, parse_set_args(args.overrides))
    run_dir = RunDir.of(recipe.name, args.out)
    out = str(run_dir)
    start = run_dir.plan_start(
        dump_recipe(recipe), resume=args.resume, overwrite=args.overwrite, source=source
    )
    if recipe.train is not None:
        check_data_paths(recipe.train.data)  # before torch: a wrong path fails in a moment
    if args.nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:
        return _relaunch(args)
    from acdc_recipe.trainer.interrupt import TrainingInterrupted
    from acdc_recipe.trainer.launch import report_worker_error, signal_name
    from acdc_recipe.trainer.loop import TrainingDiverged, train

    try:
        train(
            recipe,
            run_dir,
            start,
            resume=args.resume,
            device=args.device,
            overwrite=args.overwrite,
            threads=args.threads,
            log_every=args.log_every,
        )
    except UserError:
        raise
    except TrainingDiverged as stop:
        lower = f"train.optimizer.lr={recipe.train.optimizer.lr / 10:g}"
        kept = (
            f"the newest checkpoint, {stop.checkpoint} in {out}, holds only finite values"
            if stop.checkpoint
            else "no checkpoint was written yet, so the run starts again from step 0"
        )
        what = (
            f"the training loss at step {stop.step} (epoch {stop.epoch}) is {stop.loss}, so "
            "training stopped before that step changed any weight"
            if stop.loss is not None
            else f"the weights at step {stop.step} (epoch {stop.epoch}) hold NaN or infinite "
            "values, so they were not checkpointed"
        )
        paragraph = (
            f"error: the run diverged: {what}. Nothing non-finite was saved: {kept}. Continue "
            f"with a lower learning rate (or another train.lr_schedule): "
            f"`{_resume_command(args, out, lower)}`."
        )
        if not report_worker_error(paragraph, 1):
            errors.print(paragraph, markup=False, highlight=False, soft_wrap=True)
        return 1
    except TrainingInterrupted as stop:  # Ctrl-C or SIGTERM, stopped at a step boundary
        errors.print(
            f"interrupted ({signal_name(stop.signal_number)}) at step {stop.step}; the "
            f"checkpoint {stop.checkpoint} in {out} holds it, so nothing is lost: continue with "
            f"`{_resume_command(args, out)}`",
            markup=False,
            highlight=False,
            soft_wrap=True,  # one line: the command stays copyable
        )
        return 128 + stop.signal_number
    except Exception as error:  # a failure during training: one paragraph, exit 1
        if os.environ.get("ACDC_TRACEBACK"):
            traceback.print_exc()
        paragraph = (
            f"error: training failed: {type(error).__name__}: {error}. Checkpoints written so "
            f"far are in {out}; fix the cause and continue with `{_resume_command(args, out)}` "
            "(set ACDC_TRACEBACK=1 to see the traceback)."
        )
        if not report_worker_error(paragraph, 1):
            errors.print(paragraph, markup=False, highlight=False, soft_wrap=True)
        return 1
    return 0
