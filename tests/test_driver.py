"""bnsweep.driver: the command a sweep started from Python prints to resume it is the sweep itself; `bnsweep run`'s
options are one RunOptions, which the CLI builds and Python may pass or spell as keywords."""

import dataclasses
import io
import shlex

import pytest

import bnsweep
from bnsweep.cli import build_parser
from bnsweep.driver import RunOptions, run_command, run_sweep
from bnsweep.sweep import load


def test_the_resume_command_of_a_python_run_keeps_its_sets_and_seeds(tmp_path):
    sets = ["steps=7", "lr=[0.05, 0.2]"]
    command = run_command("lr_grid", scale="smoke", results=str(tmp_path / "r x"), sets=sets, seeds=2,
                          data_root=str(tmp_path), num_cpus=1, keep_checkpoints=True, trackers=["mlflow"])
    words = shlex.split(command)
    assert words[0] == "bnsweep"
    args = build_parser().parse_args(words[1:])
    assert (args.sweep, args.scale, args.results) == ("lr_grid", "smoke", str(tmp_path / "r x"))
    assert (args.data_root, args.num_cpus, args.keep_checkpoints, args.log) == (str(tmp_path), 1, True, ["mlflow"])
    resumed = load(args.sweep, args.scale, args.sets, args.seeds)
    started = load("lr_grid", "smoke", sets, 2)
    assert [c.trial_id for c in resumed.configs] == [c.trial_id for c in started.configs]
    assert [c.trial_id for c in resumed.configs] != [c.trial_id for c in load("lr_grid", "smoke").configs]


def test_run_options_are_the_run_flags_and_keywords_are_its_fields(tmp_path):
    flags = set(vars(build_parser().parse_args(["run", "lr_grid"]))) - {"command", "sweep"}
    assert {"trackers" if f == "log" else f for f in flags} == \
        {f.name for f in dataclasses.fields(RunOptions)} - {"command", "stream"}  # every flag has its field
    given = {"scale": "smoke", "results": str(tmp_path / "r"), "sets": ["steps=7"], "seeds": 2, "dry_run": True}
    by_options, by_keywords = io.StringIO(), io.StringIO()
    run_sweep("lr_grid", RunOptions(**given, stream=by_options))
    bnsweep.run_sweep("lr_grid", **given, stream=by_keywords)  # the Python face keeps run_sweep's keyword names
    assert by_options.getvalue() == by_keywords.getvalue() and "seed=1" in by_options.getvalue()
    assert run_command("lr_grid", RunOptions(**given)) == run_command("lr_grid", **given)
    with pytest.raises(TypeError, match="seed"):  # a misspelt option is an error, not silently dropped
        run_sweep("lr_grid", RunOptions(**given), seed=3)
