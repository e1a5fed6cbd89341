"""The `bnsweep` command. Bad input is one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import sys

from bnsweep.config import FIELDS, TrialConfig
from bnsweep.errors import BnsweepError
from bnsweep.rules import Invalid, Items, Nullable, Number, Rule, printable, show


class Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line (it prints the whole usage by default)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise BnsweepError(f"{message} (see {self.prog} --help)")


def _add_trial_options(parser: argparse.ArgumentParser) -> None:
    # One option per TrialConfig field, so every knob is documented and named as in sweep files and tables.
    defaults = TrialConfig()
    for f in dataclasses.fields(TrialConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        # argparse %-formats help texts: a literal % ("~25% faster") must be doubled.
        help_text = f"{f.metadata['help']} [default: {shown}{_valid_range(f.metadata['valid'])}]".replace("%", "%%")
        if str(f.type).startswith("bool"):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, metavar=f.name.upper(), default=None, help=help_text)
    parser.add_argument("--no-probes", action="store_true", help="switch every probe off (same as --probe-every 0)")


def _whole(text: str) -> int:
    """argparse's type of --seeds and --num-cpus: int() alone reads Arabic-Indic (١٠) or full-width digits as a
    number; the ranges are checked where the values are used."""
    try:
        return Number(int, -float("inf"), float("inf")).parse(text)
    except Invalid as e:
        raise argparse.ArgumentTypeError(f"{show(text)}: {e}; use a whole number") from None


def _valid_range(rule: Rule) -> str:
    """The valid range of a numeric or list option for --help ("; 1 to 10000000"); words list their choices."""
    inner = rule.rule if isinstance(rule, Nullable) else rule
    if not isinstance(inner, Number | Items):
        return ""
    return "; valid: " + inner.describe().removeprefix("use ")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="bnsweep", description="Sweeps of normalization variants x learning rates x "
                    "architectures on Ray Tune, with the landscape metrics of Santurkar et al. (2018).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    trial = sub.add_parser("trial", help="run one trial without Ray and print a one-line summary",
                           description="Train one trial on this machine and write its Parquet tables.")
    trial.add_argument("--results", default="results/trial",
                       help="results directory or s3://... URI [default: results/trial]")
    trial.add_argument("--force", action="store_true",
                       help="rerun and replace a trial already recorded in --results")
    _add_trial_options(trial)

    run = sub.add_parser("run", help="run (or continue) a sweep on Ray Tune",
                         description="Run the grid of a sweep on Ray Tune. Running the same command again "
                         "continues it: recorded grid points are not run again.")
    run.add_argument("sweep", help="a sweep name in sweeps/ (see `bnsweep sweeps`) or a path to a YAML file; a suite "
                     "(science: every sweep a claim needs) runs each of its sweeps into RESULTS/<sweep>, with "
                     "figures, check and RESULTS/index.html")
    run.add_argument("--scale", default=None, help="paper, cpu or smoke [default: paper with --address or a GPU, "
                     "else cpu]")
    run.add_argument("--results", default=None, help="results directory or s3://... URI [default: results/SWEEP]")
    run.add_argument("--address", default=None, help="join a running Ray cluster (e.g. auto) [default: "
                     "$RAY_ADDRESS, else an embedded local Ray]")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                     help="override a trial option for every grid (GRID.KEY=VALUE for one grid; "
                     "resources.cpu=0.5); repeatable")
    run.add_argument("--seeds", type=_whole, default=None, help="repeat the grid over N seeds")
    run.add_argument("--dry-run", action="store_true", help="print the trials and stop")
    run.add_argument("--verbose", action="store_true", help="show Ray's own output")
    run.add_argument("--data-root", default=None, help="data root [default: $BNSWEEP_DATA, then the usual places]")
    run.add_argument("--keep-checkpoints", action="store_true",
                     help="keep each finished trial's checkpoints [default: deleted once its records are written]")
    run.add_argument("--log", action="append", default=[], metavar="TRACKER",
                     help="also log each trial to tensorboard, mlflow or wandb through Ray Tune's integrations "
                     "(repeatable; MLflow honours MLFLOW_TRACKING_URI, W&B WANDB_MODE and WANDB_DIR); the Parquet "
                     "records stay the record of truth")
    run.add_argument("--num-cpus", type=_whole, default=None, help="CPUs of the embedded local Ray [default: all]")
    run.add_argument("--precision", default=None, help="every trial's training-step precision: fp32 (TF32 off), tf32 "
                     "or bf16; probes and evaluations stay fp32 [default: the sweep's, fp32]")
    run.add_argument("--deterministic", action="store_true", help="deterministic algorithms in every trial "
                     "(torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG=:4096:8; slower)")
    run.add_argument("--fuse", type=_whole, default=None, metavar="K", help="train trials that differ only in lr "
                     "and seed as fused cohorts of up to K, one model in one process per cohort (bnsweep/fused.py); "
                     "the others run alone; probes must be off [default: no fusing]")

    sweeps = sub.add_parser("sweeps", help="list the sweeps with their grids and sizes per scale")
    sweeps.add_argument("--scale", default=None, help="only this scale")

    status = sub.add_parser("status", help="summarise a results directory, with the error of each failed trial")
    status.add_argument("results", help="results directory or s3://... URI")

    figures = sub.add_parser("figures", help="draw the paper's figures from a results directory",
                             description="Write every figure whose tables are present as PNG and SVG, and an "
                             "offline index.html.")
    figures.add_argument("results", help="results directory or s3://... URI")
    figures.add_argument("--out", default=None, help="output directory [default: RESULTS/figures]")

    check = sub.add_parser("check", help="check the claims C1..C14 (the paper's C1..C6, C7..C14 beyond it) "
                           "against a results directory",
                           description="Print a verdict per claim and write RESULTS/claims.json.")
    check.add_argument("results", help="results directory or s3://... URI")

    compare = sub.add_parser("compare", help="the differences between two results directories: provenance, claims, "
                             "cells and brackets", description="Print one table of what differs between results A "
                             "and B (machine, versions, commit, precision, config; each claim's verdict, from "
                             "claims.json when it is current, else judged now; each cell's outcome and each "
                             "critical-rate bracket) and write compare.html. Nothing in A or B is written.")
    compare.add_argument("a", metavar="A", help="results directory or s3://... URI")
    compare.add_argument("b", metavar="B", help="results directory or s3://... URI")
    compare.add_argument("--out", default=None, help="directory of compare.html [default: the current directory; "
                         "refused where it would replace a compare.html inside A or B]")

    unlock = sub.add_parser("unlock", help="break the lock of a results directory whose bnsweep run is dead",
                            description="Remove RESULTS/.lock, which `bnsweep run` holds while it writes. Only "
                            "for a run that died on another host: a dead run's lock on this host is taken over by "
                            "the next run, and a running one's is refused.")
    unlock.add_argument("results", help="results directory or s3://... URI")
    return parser


MAX_MESSAGE = 400  # characters of an error line: bad values are shown cut already; this bounds the rest


def option(name: str) -> str:
    """The CLI spelling of a trial option: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def trial_config_from_args(args: argparse.Namespace) -> TrialConfig:
    from bnsweep.config import make_config

    values = {name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None}
    if getattr(args, "no_probes", False):
        values["probe_every"] = 0
    return make_config(values, labels={name: option(name) for name in FIELDS})


def cmd_trial(args: argparse.Namespace) -> int:
    from bnsweep import records
    from bnsweep.trial import run_trial

    records.check_location(args.results, "--results")
    config = trial_config_from_args(args)
    records.check_writable(args.results)
    if config.trial_id in records.finished_trial_ids(args.results) and not args.force:
        print(f"{config.trial_id}: already recorded in {printable(args.results)} (pass --force to rerun and replace "
              "it)")
        return 0
    trial = run_trial(config)
    print(printable(summary_line(trial)))  # first: a disk that filled up during training cannot lose the outcome
    try:
        records.write_trial(args.results, config.trial_id, trial.tables())
    except BnsweepError as e:
        raise BnsweepError(f"trial {config.trial_id} ran (outcome above) but was not recorded: {e}") from None
    if trial.status == "failed":
        print(f"bnsweep: trial failed: {printable(str(trial.error))}", file=sys.stderr)
        return 1
    return 0


def summary_line(trial) -> str:
    """One line of a finished `bnsweep trial`: outcome, accuracies or test loss, divergence, error, time."""
    o = trial.outcome()
    c = trial.config
    parts = [f"{c.trial_id}: {o['status']}", f"trained={o['trained']}", f"steps={o['steps_done']}",
             f"final_loss={o['final_loss']:.4g}"]
    if trial.task == "classification":
        parts += [f"train_acc={o['final_train_acc']:.3f}", f"test_acc={o['final_test_acc']:.3f}"]
    else:
        parts += [f"test_loss={o['final_test_loss']:.4g}"]
    if o["diverged_step"] is not None:
        parts.append(f"diverged_at={o['diverged_step']}")
    if o["error"]:
        parts.append(f"error={o['error']}")
    parts.append(f"{o['wall_time_s']:.1f}s")
    return " ".join(parts)


def cmd_run(args: argparse.Namespace) -> int:
    from bnsweep.driver import RunOptions, run_sweep
    from bnsweep.status import resume_command
    from bnsweep.suite import find_suite, run_suite

    run = run_suite if find_suite(args.sweep) is not None else run_sweep  # `science`: a suite of sweeps
    run(args.sweep, RunOptions(
        scale=args.scale, results=args.results, address=args.address, sets=args.sets, seeds=args.seeds,
        dry_run=args.dry_run, verbose=args.verbose, data_root=args.data_root, num_cpus=args.num_cpus,
        command=resume_command(sys.argv[1:]), keep_checkpoints=args.keep_checkpoints, trackers=args.log,
        precision=args.precision, deterministic=args.deterministic, fuse=args.fuse))
    return 0


def cmd_sweeps(args: argparse.Namespace) -> int:
    from bnsweep.suite import available as suite_names
    from bnsweep.suite import find_suite, load_suite
    from bnsweep.sweep import SCALES, available, axes, load, rough_cost

    for name in available():
        for scale in [args.scale] if args.scale else SCALES:
            try:
                sw = load(name, scale)
            except BnsweepError as e:
                print(printable(f"{name} [{scale}]: {e}"))
                continue
            if scale == SCALES[0] or args.scale:
                print(f"{printable(name)}: {printable(sw.description)}")
            grid = "  ".join(f"{k}={','.join(f'{v:g}' if isinstance(v, float) else str(v) for v in vals)}"
                             for k, vals in axes(sw).items())
            print(f"  {scale:<6} {rough_cost(sw)}; {grid}")
    for name in suite_names():
        try:
            s = load_suite(find_suite(name))
        except BnsweepError as e:
            print(printable(f"{name} [suite]: {e}"))
            continue
        print(f"{printable(name)}: {printable(s.description)}")
        print(f"  suite  {len(s.sweeps)} sweeps, one after another (bnsweep run {printable(name)}): "
              + ", ".join(f"{k} ({', '.join(v)})" if v else k for k, v in s.sweeps.items()))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from bnsweep import records
    from bnsweep.boundary import report
    from bnsweep.status import status_report

    records.check_location(args.results, "results", exists=True)
    text, brackets = status_report(args.results), report(args.results)
    if brackets:  # a critical-learning-rate search's `boundaries`
        text += "\n\ncritical learning rate (boundaries):\n" + brackets
    print(text)
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from analysis.commands import figures
    from bnsweep import records

    records.check_location(args.results, "results")
    if args.out is not None:
        records.check_location(args.out, "--out")
    return figures(args.results, args.out)


def cmd_check(args: argparse.Namespace) -> int:
    from analysis.commands import check
    from bnsweep import records

    records.check_location(args.results, "results")
    return check(args.results)


def cmd_compare(args: argparse.Namespace) -> int:
    from analysis.compare import compare
    from bnsweep import records

    records.check_location(args.a, "A")
    records.check_location(args.b, "B")
    if args.out is not None:
        records.check_location(args.out, "--out")
    return compare(args.a, args.b, args.out)


def cmd_unlock(args: argparse.Namespace) -> int:
    from bnsweep import lock, records

    records.check_location(args.results, "results", exists=True)
    print(printable(lock.unlock(records.absolute(args.results))))
    return 0


COMMANDS = {"trial": cmd_trial, "run": cmd_run, "sweeps": cmd_sweeps, "status": cmd_status,
            "figures": cmd_figures, "check": cmd_check, "compare": cmd_compare,
            "unlock": cmd_unlock}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return COMMANDS[args.command](args)
    except BnsweepError as e:
        return _error(str(e))
    except BrokenPipeError:  # output piped into head/less that closed early
        return 0
    except Exception as e:
        # analysis/ raises its own AnalysisError (it never imports bnsweep's training code).
        if type(e).__name__ == "AnalysisError":
            return _error(str(e))
        cause = user_error_in(e)
        if cause is None:
            raise
        return _error(cause)
    except KeyboardInterrupt:
        print("bnsweep: interrupted", file=sys.stderr)
        return 130


WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def user_error_in(e: BaseException) -> str | None:
    """The message of bad input or a full, read-only disk found in `e` or the exceptions it was raised from, or
    None (a bug: its traceback is shown). Ray Tune re-raises an error of a callback (the driver recording a failed
    trial on a full disk) as a TuneError raised while handling it, so the chain is searched, not just `e`."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, BnsweepError):
            return str(e)
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
            # Tune's own state or checkpoints, written outside bnsweep's records.
            return (f"cannot write {e.filename or 'the results'} ({e.strerror}): free space or choose a writable "
                    "--results; the trial records written before are intact (each is published whole), Tune's own "
                    "files may not be")
        e = e.__cause__ if e.__cause__ is not None else None if e.__suppress_context__ else e.__context__
    return None


def _error(message: str) -> int:
    """Bad input: one line on stderr, at most MAX_MESSAGE characters, control characters escaped, exit code 2."""
    line = printable(" ".join(message.split()))
    if len(line) > MAX_MESSAGE:
        line = line[:MAX_MESSAGE - 1] + "…"
    print(f"bnsweep: error: {line}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
