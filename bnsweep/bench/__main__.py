"""Dispatch `python -m bnsweep.bench NAME [options]` to the benchmark module of that name."""

import importlib
import sys

BENCHES = ("trial", "probes", "sweep", "figures", "paper", "gpu")


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHES:
        print(f"usage: python -m bnsweep.bench {{{','.join(BENCHES)}}} [options]", file=sys.stderr)
        return 2
    name = sys.argv.pop(1)
    try:
        module = importlib.import_module(f"bnsweep.bench.{name}")
    except ModuleNotFoundError as e:
        print(f"benchmark {name!r} is not available: {e}", file=sys.stderr)
        return 2
    return module.main(sys.argv[1:]) or 0


sys.exit(main())
