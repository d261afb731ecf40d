"""Accuracy over several seeds: train.py and test.py once per seed, then one table of the spread.

    python benchmarks/seeds.py                                # seeds 0 1 2 of the default recipe, in runs/seed0..2
    python benchmarks/seeds.py --seeds 0 1 2 3 4 -- --epochs 20   # flags after -- go to train.py

Each seed runs `python train.py --seed S --test-each-epoch --out-dir OUT/seedS` (test accuracy recorded after every
epoch, never used to choose best.pt, which is chosen on validation), then `python test.py` on its best.pt. The
summary (Markdown, printed and written to OUT/summary.md) gives per seed the wall clock of the whole train.py
command, its training seconds, the chosen epoch, validation and test accuracy, and the training seconds until the
test accuracy first reached --target; then min/mean/max over seeds and the mean test accuracy after each epoch.
OUT/seeds.png draws each seed's test error after every epoch, against epochs and against training seconds.

Run the same command again after Ctrl-C (or a crash) and it goes on where it stopped: finished seeds are not
trained again, and an interrupted one continues with `train.py --resume`. More seeds into the same --out-dir
reuse the finished ones too. A seed folder that holds a run of other train.py flags is refused, not overwritten.
"""
from __future__ import annotations

import csv
import itertools
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from lib.cli import ArgumentParser, add_shared_flags, random_seed, run_cli
from lib.common import UserError
from lib.files import all_or_none, check_writable_dir, write_json
from lib.plots import pyplot, save_figure
from lib.reports import TEST_REPORT

OWN_FLAGS = ("--seed", "--out-dir", "--test-each-epoch")  # set per seed by this script
# In each seed's folder: its train.py flags, whether training finished, and how long it took.
RUN_RECORD = "seeds_run.json"
ENSEMBLES = "ensembles.json"  # in OUT_DIR: the ensembles' test accuracies, and the best.pt files they are of


def parse_args(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    own, train_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = ArgumentParser(description="Train and test one run per seed; print the spread of test accuracy, the time "
                                        "to a target, and the accuracy of ensembles of the seeds.",
                            epilog="Flags after -- go to train.py, e.g. -- --epochs 20 --batch-size 1024.")
    parser.add_argument("--seeds", type=random_seed, nargs="+", default=[0, 1, 2],
                        help="one run per seed, one after another")
    parser.add_argument("--out-dir", default="runs",
                        help="each seed's run goes to OUT_DIR/seedN, the summary to OUT_DIR/summary.md")
    parser.add_argument("--target", type=float, default=99.5, help="test accuracy (%%) whose time to reach is reported")
    add_shared_flags(parser, "--data-dir", "--device")
    args = parser.parse_args(own)
    clashes = [flag for flag in train_args if flag.split("=")[0] in OWN_FLAGS]
    if clashes:
        raise UserError(f"{', '.join(clashes)} after -- is set by this script for each seed; use --seeds / --out-dir "
                        "instead")
    args.train_args = train_args
    return args


def run_child(command: list[str], what: str) -> None:
    """Run a script in the foreground; on Ctrl-C it stops itself (train.py saves last.pt first) and so does this one."""
    # A handler, not SIG_IGN: ignoring would be inherited by the child, and Ctrl-C must reach it.
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        returncode = subprocess.run(command).returncode
    finally:
        signal.signal(signal.SIGINT, previous)
    if returncode in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        raise UserError(f"{what} was interrupted; run the same command again to go on from there", exit_code=returncode)
    if returncode:
        raise UserError(f"{what} failed (its output is above)", exit_code=1)


def run_seed(seed: int, run_dir: Path, args) -> float | None:
    """Train and test one seed as a user would (separate processes), or finish what an earlier call started.

    Returns train.py's wall-clock seconds, or None where its training was interrupted and resumed (no one number).
    """
    common = ["--device", args.device] + (["--data-dir", args.data_dir] if args.data_dir else [])
    train = [sys.executable, str(ROOT / "train.py"), "--seed", str(seed), "--test-each-epoch", "--out-dir",
             str(run_dir), *common]
    test = [sys.executable, str(ROOT / "test.py"), "--weights", str(run_dir / "best.pt"), *common]  # reports beside it
    record_path = run_dir / RUN_RECORD
    record = json.loads(record_path.read_text()) if record_path.exists() else None
    started_before = (run_dir / "last.pt").exists()
    if started_before and (record is None or record["train_args"] != args.train_args):
        flags = "" if record is None else " ".join(record["train_args"]) or "(defaults)"
        what = "a run this script did not start" if record is None else f"a run of train.py flags {flags}"
        raise UserError(f"{run_dir} holds {what}; choose another --out-dir or remove {run_dir}")
    if record is None or not record["trained"]:
        # Resuming, train.py takes the recipe from last.pt (the same flags, checked above) but how to run (--compile,
        # --no-cuda-graphs) from its command line, so the flags go along either way.
        train += (["--resume"] if started_before else []) + args.train_args
        print(f"\n=== seed {seed}: {' '.join(train[1:])}", flush=True)
        record = {"train_args": args.train_args, "trained": False, "wall_seconds": None}
        write_json(record_path, record)
        started = time.perf_counter()
        run_child(train, f"train.py for seed {seed}")
        record.update(trained=True, wall_seconds=None if started_before else time.perf_counter() - started)
        write_json(record_path, record)
    report, weights = run_dir / TEST_REPORT, run_dir / "best.pt"
    if report.exists() and weights.exists() and report.stat().st_mtime >= weights.stat().st_mtime:
        print(f"\n=== seed {seed}: trained and tested earlier, in {run_dir}", flush=True)
    else:
        run_child(test, f"test.py for seed {seed}")
    return record["wall_seconds"]


def percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


def read_run(run_dir: Path) -> tuple[list[dict], dict]:
    """A finished run's metrics.csv rows (train.py --test-each-epoch) and test_report.json (test.py)."""
    with open(run_dir / "metrics.csv", newline="") as f:
        history = list(csv.DictReader(f))
    return history, json.loads((run_dir / TEST_REPORT).read_text())


def summarise(runs: dict[int, Path], wall_seconds: dict[int, float | None], target: float) -> str:
    """The Markdown summary of finished runs: {seed: run folder with metrics.csv and test_report.json}."""
    lines = [f"| seed | train.py wall s | training s | chosen epoch | val acc | test acc | training s to {target}% "
             "test |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    tests, per_epoch = [], {}
    for seed, run_dir in runs.items():
        history, report = read_run(run_dir)
        elapsed, reached = 0.0, "not reached"
        for row in history:
            elapsed += float(row["seconds"])
            per_epoch.setdefault(int(row["epoch"]), []).append((float(row["test_acc"]), elapsed))
            if reached == "not reached" and 100 * float(row["test_acc"]) >= target:
                reached = f"{elapsed:.1f} (epoch {row['epoch']})"
        val_acc = float(history[report["epoch"] - 1]["val_acc"])
        tests.append(report["accuracy"])
        wall = "resumed" if wall_seconds[seed] is None else f"{wall_seconds[seed]:.1f}"
        lines.append(f"| {seed} | {wall} | {elapsed:.1f} | {report['epoch']} | {percent(val_acc)} | "
                     f"{percent(report['accuracy'])} | {reached} |")
    lines += ["", "(train.py wall s: the whole command, start-up, data loading and the per-epoch test passes included, "
                  "\"resumed\" where it was interrupted and continued; training s: the sum of metrics.csv's `seconds`, "
                  "training and validation.)",
              "", f"**test accuracy over {len(tests)} seed{'s' if len(tests) > 1 else ''}: min {percent(min(tests))}, "
                  f"mean {percent(statistics.mean(tests))}, max {percent(max(tests))}** (best.pt of each, chosen on "
                  "validation)", "",
              "| epoch | mean test acc | min | max | mean training s so far |", "| ---: | ---: | ---: | ---: | ---: |"]
    for epoch, values in sorted(per_epoch.items()):
        accuracies = [acc for acc, _ in values]
        lines.append(f"| {epoch} | {percent(statistics.mean(accuracies))} | {percent(min(accuracies))} | "
                     f"{percent(max(accuracies))} | {statistics.mean(s for _, s in values):.1f} |")
    return "\n".join(lines) + "\n"


def ensemble_accuracies(runs: dict[int, Path], args) -> list[float]:
    """Test accuracy of the ensemble of the first 1, 2, ... seeds' best.pt, in --seeds order.

    Each member's logits are computed once, as test.py computes them, and combined as lib.inference.Ensemble does.
    The accuracies are kept in OUT_DIR/ENSEMBLES with what they were computed from, so that the same command again
    (all seeds done) evaluates nothing.
    """
    import data
    from lib.device import choose_precision, pick_device
    from lib.inference import Ensemble, evaluate_members, load_models

    device = pick_device(args.device)
    precision = choose_precision(device).name  # test.py's default
    weights = [str(run_dir / "best.pt") for run_dir in runs.values()]
    source = {"weights": {path: Path(path).stat().st_mtime_ns for path in weights}, "device": str(device),
              "precision": precision}
    kept = Path(args.out_dir) / ENSEMBLES
    if kept.exists() and (earlier := json.loads(kept.read_text()))["source"] == source:
        return earlier["accuracies"]
    images, labels = data.load_test(args.data_dir, device)
    ensemble, _ = load_models(weights, device)
    members = ensemble.members if isinstance(ensemble, Ensemble) else [ensemble]
    logits = [result["logits"] for result in evaluate_members(members, images, labels, weights, precision=precision)]
    accuracies = [(Ensemble.combine(logits[:size]).argmax(1) == labels).float().mean().item()
                  for size in range(1, len(logits) + 1)]
    write_json(kept, {"source": source, "accuracies": accuracies})
    return accuracies


def ensemble_table(runs: dict[int, Path], accuracies: list[float]) -> str:
    lines = ["| models in the ensemble | seeds | test acc |", "| ---: | --- | ---: |"]
    seeds = list(runs)
    for size, accuracy in enumerate(accuracies, start=1):
        lines.append(f"| {size} | {' '.join(map(str, seeds[:size]))} | {percent(accuracy)} |")
    return "\n".join(lines) + "\n"


def plot_seeds(path: Path, runs: dict[int, Path], target: float, ensemble: list[float]) -> None:
    """Each seed's test error after every epoch, against epochs and against training seconds, the epoch of its best.pt
    starred. A log scale, so that 0.3% and 3% are both readable; the target is the dashed line."""
    from matplotlib import ticker

    plt = pyplot()
    fig, (*axes, ax_ensemble) = plt.subplots(1, 3, figsize=(16, 4.2), sharey=True)
    for seed, run_dir in runs.items():
        history, report = read_run(run_dir)
        errors = [100 * (1 - float(row["test_acc"])) for row in history]
        chosen = report["epoch"] - 1
        for ax, x in zip(axes, ([int(row["epoch"]) for row in history],
                                list(itertools.accumulate(float(row["seconds"]) for row in history)))):
            line, = ax.plot(x, errors, "o-", markersize=3, label=f"seed {seed}: {100 * report['accuracy']:.2f}%")
            ax.plot(x[chosen], errors[chosen], "*", markersize=12, color=line.get_color())
    for ax, xlabel in zip(axes, ("epoch", "training seconds (validation passes included)")):
        ax.axhline(100 - target, color="black", linestyle="--", linewidth=1, label=f"{target}% accuracy")
        ax.set(xlabel=xlabel, yscale="log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))  # 0.3, not 3x10^-1
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        ax.grid(alpha=0.3, which="both")
    axes[0].xaxis.get_major_locator().set_params(integer=True)
    axes[0].set(ylabel="test error (%)")
    axes[0].legend(title="seed: test accuracy of best.pt")
    sizes = range(1, len(ensemble) + 1)
    ax_ensemble.plot(sizes, [100 * (1 - accuracy) for accuracy in ensemble], "o-", color="black")
    ax_ensemble.axhline(100 - target, color="black", linestyle="--", linewidth=1)
    ax_ensemble.set(xlabel="models in the ensemble (the first seeds, probabilities averaged)", xticks=list(sizes))
    ax_ensemble.grid(alpha=0.3, which="both")
    fig.suptitle("Test error after each epoch (* the epoch of best.pt, chosen on validation); right: ensembles of the "
                 "first seeds' best.pt")
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    check_writable_dir(out_dir, f"--out-dir {out_dir}")  # before hours of training, not when the summary is written
    runs = {seed: out_dir / f"seed{seed}" for seed in args.seeds}
    wall_seconds = {seed: run_seed(seed, run_dir, args) for seed, run_dir in runs.items()}
    ensemble = ensemble_accuracies(runs, args)
    summary = summarise(runs, wall_seconds, args.target) + "\n" + ensemble_table(runs, ensemble)
    with all_or_none() as stage:
        flags = " ".join(args.train_args) or "(defaults)"
        stage(out_dir / "summary.md").write_text(f"train.py flags: {flags}\n\n{summary}")
        plot_seeds(stage(out_dir / "seeds.png"), runs, args.target, ensemble)
    print(f"\n{summary}\nwrote {out_dir / 'summary.md'} and {out_dir / 'seeds.png'}")


if __name__ == "__main__":
    run_cli(main)
