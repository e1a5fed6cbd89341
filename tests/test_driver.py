"""bnsweep.driver: the command a sweep started from Python prints to resume it is the sweep itself."""

import shlex

from bnsweep.cli import build_parser
from bnsweep.driver import run_command
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
