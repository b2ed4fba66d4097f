"""The commands over runs: report, runs, compare and sweep."""

from __future__ import annotations

import sys
from pathlib import Path

from cifarlab.cli.output import progress_log


def add_report(sub) -> None:
    p = sub.add_parser("report", help="write an HTML report (and PNG figures) into a run directory")
    p.add_argument("run", type=Path, metavar="RUNDIR")
    p.add_argument("--data-dir", type=Path, help="CIFAR-10 location, for the error analysis (default: $CIFARLAB_DATA or ~/.cache/cifarlab)")
    p.add_argument("--device", default="auto", help="device for the test-set predictions: auto, cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from cifarlab.experiments.report import build_report

    log = progress_log(args.quiet)
    print(build_report(args.run, args.data_dir, args.device, log=log, progress=not args.quiet))
    return 0


def add_runs(sub) -> None:
    from cifarlab.experiments.runs import COLUMNS

    p = sub.add_parser("runs", help="list the runs under a folder as a table")
    p.add_argument("folder", type=Path, nargs="?", default=Path("runs"), help="folder to search (default: %(default)s)")
    p.add_argument("--sort", default="name", choices=COLUMNS, help="column to sort by (default: %(default)s)")
    p.add_argument("--reverse", action="store_true", help="sort descending")
    p.add_argument("--json", action="store_true", help="print JSON rows for scripts")
    p.set_defaults(func=cmd_runs)


def cmd_runs(args) -> int:
    from cifarlab.experiments.runs import format_runs, list_runs, runs_json

    rows = list_runs(args.folder, args.sort, args.reverse, warn=lambda s: print(f"cifarlab runs: {s}", file=sys.stderr))
    print(runs_json(rows) if args.json else format_runs(rows))
    return 0


def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="one HTML page overlaying runs' curves and tabulating their configs")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUNDIR")
    p.add_argument("--out", type=Path, default=Path("comparison"), help="folder for compare.html and its PNGs (default: %(default)s)")
    p.add_argument(
        "--data-dir",
        type=Path,
        help="CIFAR-10 location, for the test accuracy of runs not finished (default: each run's own data, else $CIFARLAB_DATA or ~/.cache/cifarlab)",
    )
    p.add_argument("--device", default="auto", help="device for those test-set predictions: auto, cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    from cifarlab.experiments.compare import compare_runs

    log = progress_log(args.quiet)
    print(compare_runs(args.runs, args.out, args.data_dir, args.device, log))
    return 0


def add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="train the variants of a sweep spec (TOML) as trials of one Optuna study, and rank them")
    p.add_argument("spec", type=Path, metavar="SPEC.toml")
    p.add_argument("--out", type=Path, help="sweep folder (default: next to the spec, named after it)")
    p.add_argument(
        "--storage",
        metavar="URL",
        help="the study's database: default a SQLite file in the sweep folder; "
        "any URL Optuna accepts, e.g. postgresql+psycopg://user:password@host/db, shared by workers on several machines",
    )
    p.add_argument("--data-dir", type=Path, help="CIFAR-10 location (default: $CIFARLAB_DATA or ~/.cache/cifarlab)")
    p.add_argument("--device", default="auto", help="auto (worker i on cuda:(i %% GPUs) when there are GPUs), cpu, cuda:N")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="run N workers on this machine, in processes of their own")
    p.add_argument(
        "--heartbeat",
        type=int,
        default=30,
        metavar="S",
        help="seconds between a worker's heartbeats; a trial silent for 3 of them is retried (default: %(default)s)",
    )
    p.add_argument("--retry-failed", action="store_true", help="queue the variants that failed again")
    p.add_argument("--list", action="store_true", help="only list the variants (a search's trials, with their values) and their state")
    p.add_argument("--leaderboard", action="store_true", help="only write the leaderboard pages again, from the study's storage")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--yes", action="store_true", help="accept a spec of more than 1,000 variants or trials")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    from cifarlab.experiments.sweep import MAX_VARIANTS, format_leaderboard, list_variants, load_spec, rebuild_leaderboard, run_sweep

    spec = load_spec(args.spec, max_variants=None if args.yes else MAX_VARIANTS)
    if args.list:
        print(list_variants(spec, args.out, args.storage))
        return 0
    if args.leaderboard:
        board = rebuild_leaderboard(spec, args.out, args.storage)
    else:
        board = run_sweep(
            spec,
            args.out,
            args.data_dir,
            args.device,
            args.workers,
            progress=not args.quiet,
            storage=args.storage,
            heartbeat=args.heartbeat,
            retry_failed=args.retry_failed,
        )
    print(format_leaderboard(board))
    return 0
