"""The `bnsweep` command. Bad input is one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from bnsweep.config import FIELDS, TrialConfig
from bnsweep.errors import BnsweepError


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
        help_text = f"{f.metadata['help']} [default: {shown}]"
        if str(f.type).startswith("bool"):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, metavar=f.name.upper(), default=None, help=help_text)
    parser.add_argument("--no-probes", action="store_true", help="switch every probe off (same as --probe-every 0)")


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
    return parser


def trial_config_from_args(args: argparse.Namespace) -> TrialConfig:
    from bnsweep.config import make_config

    values = {name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None}
    if getattr(args, "no_probes", False):
        values["probe_every"] = 0
    return make_config(values)


def cmd_trial(args: argparse.Namespace) -> int:
    from bnsweep import records
    from bnsweep.trial import run_trial, summary_line

    config = trial_config_from_args(args)
    records.check_writable(args.results)
    if config.trial_id in records.finished_trial_ids(args.results) and not args.force:
        print(f"{config.trial_id}: already recorded in {args.results} (pass --force to rerun and replace it)")
        return 0
    trial = run_trial(config, args.results)
    print(summary_line(trial))
    if trial.status == "failed":
        print(f"bnsweep: trial failed: {trial.error}", file=sys.stderr)
        return 1
    return 0


COMMANDS = {"trial": cmd_trial}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return COMMANDS[args.command](args)
    except BnsweepError as e:
        print(f"bnsweep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bnsweep: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
