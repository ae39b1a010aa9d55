"""`python -m tests.simulation --seeds N [--first K]`, or `--seed N --trace` to replay one."""

from __future__ import annotations

import argparse
import sys

from tests.simulation.runner import replay_command, run_seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation")
    parser.add_argument("--seeds", type=int, default=10_000, help="how many seeds to run")
    parser.add_argument("--first", type=int, default=0, help="the first seed")
    parser.add_argument("--seed", type=int, help="replay this one seed")
    parser.add_argument("--trace", action="store_true",
                        help="with --seed: print every record the seed appended, in order")
    args = parser.parse_args(argv)
    if args.seed is not None:
        return replay(args.seed, args.trace)
    report = run_seeds(args.first, args.seeds)
    print(report.summary())
    for failure in report.failures[:20]:
        print(failure.describe())
    return 1 if report.failures else 0


def replay(seed: int, trace: bool) -> int:
    from tests.simulation import world as world_module
    from tests.simulation.workload import run_seed

    journal: list[str] = []
    if trace:
        world_module.TRACE = journal
    try:
        result = run_seed(seed)
    except AssertionError as exc:
        for line in journal:
            print(line)
        print(f"seed {seed} VIOLATED: {exc}")
        print(f"replay: {replay_command(seed)}")
        return 1
    finally:
        world_module.TRACE = None
    for line in journal:
        print(line)
    print(f"seed {seed}: every invariant held ({result})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
