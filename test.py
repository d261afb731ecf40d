"""Evaluate saved weights on the 10,000 MNIST test images: accuracy, per-class scores, confusion matrix.

    python test.py                          # checkpoints/best.pt
    python test.py --weights checkpoints/last.pt
    python test.py --device cpu --int8      # an int8 copy: about twice as fast as bf16 on a CPU
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import data
from lib.cli import ArgumentParser, add_shared_flags, add_weights_flag, positive_int, progress, random_seed, run_cli
from lib.corruptions import CORRUPTIONS, corrupt
from lib.device import LABELS, evaluation_precision, keep_freed_memory, pick_device, synchronize
from lib.files import all_or_none, check_writable_dir, write_json
from lib.inference import (
    CALIBRATION_IMAGES,
    EVAL_BATCH_SIZE,
    Ensemble,
    evaluate,
    evaluate_members,
    evaluate_split,
    int8_model,
    load_models,
    score,
)
from lib.plots import pyplot, save_figure
from lib.reports import (
    CONFUSION_MATRIX,
    ROBUSTNESS_FIGURE,
    ROBUSTNESS_REPORT,
    TEST_REPORT,
    report_name,
    weights_folder,
)


def parse_args(argv: list[str] | None = None):
    parser = ArgumentParser(description="Report test-set accuracy of saved ResNet-18 weights.")
    add_weights_flag(parser, "each member is tested, then the ensemble, whose files are named ensemble_*, so that "
                             "a model's own are never replaced")
    add_shared_flags(parser, "--data-dir")
    parser.add_argument("--out-dir", help=f"where {TEST_REPORT} and {CONFUSION_MATRIX} go (default: the folder of "
                                          "--weights, or the folder several --weights share)")
    add_shared_flags(parser, "--device")
    parser.add_argument("--batch-size", type=positive_int, default=EVAL_BATCH_SIZE, help="images per forward pass")
    add_shared_flags(parser, "--precision", "--no-amp")
    parser.add_argument("--int8", action="store_true",
                        help=f"CPU only: evaluate an int8 copy of the model, calibrated on {CALIBRATION_IMAGES} "
                             "training images (about twice as fast as bf16, predictions within a few images of fp32)")
    parser.add_argument("--robustness", action="store_true",
                        help="also measure accuracy under corruptions (rotation, noise, ...)")
    parser.add_argument("--robustness-images", type=positive_int, default=10000,
                        help="test images used for --robustness")
    parser.add_argument("--seed", type=random_seed, default=0, help="seed of the random corruptions")
    return parser.parse_args(argv)


def robustness_report(model, images, labels, args, out_dir: Path, members: int = 1) -> dict:
    """Accuracy under each corruption and severity; deterministic given --seed."""
    images, labels = images[: args.robustness_images], labels[: args.robustness_images]
    clean = evaluate(model, data.batches(images, labels, args.batch_size), args.precision)["accuracy"]
    results = {"clean": clean, "images": len(images), "seed": args.seed, "corruptions": {}}
    print(f"\nrobustness on {len(images)} test images (clean accuracy {100 * clean:.2f}%)")
    print(f"{'corruption':<16} " + "  ".join(f"{'severity ' + str(i + 1):>11}" for i in range(3)))
    # Minutes on a CPU: a bar with ETA on a terminal, the table rows as they come either way.
    bar = progress(total=sum(map(len, CORRUPTIONS.values())), unit="pass")
    for name, levels in CORRUPTIONS.items():
        generator = torch.Generator().manual_seed(args.seed)
        accuracies = []
        for level in levels:
            bar.set_description(f"{name} {level:g}")
            corrupted = corrupt(images, name, level, generator)
            result = evaluate(model, data.batches(corrupted, labels, args.batch_size), args.precision)
            accuracies.append(result["accuracy"])
            bar.update()
        results["corruptions"][name] = [{"level": level, "accuracy": a} for level, a in zip(levels, accuracies)]
        cells = "  ".join(f"{f'{level:g}: ' + f'{100 * a:.1f}%':>11}" for level, a in zip(levels, accuracies))
        bar.write(f"{name:<16} {cells}", file=sys.stdout)
        sys.stdout.flush()  # rows show as they come in a log too
    bar.close()
    report_path = out_dir / report_name(ROBUSTNESS_REPORT, members)
    figure_path = out_dir / report_name(ROBUSTNESS_FIGURE, members)
    with all_or_none() as stage:
        write_json(stage(report_path), results)
        plot_robustness(stage(figure_path), results)
    print(f"wrote {report_path} and {figure_path}")
    return results


def plot_robustness(path: Path, results: dict) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, rows in results["corruptions"].items():
        levels = ", ".join(f"{r['level']:g}" for r in rows)
        ax.plot(range(1, len(rows) + 1), [100 * r["accuracy"] for r in rows], "o-", label=f"{name} ({levels})")
    ax.axhline(100 * results["clean"], color="black", linestyle="--", label="clean")
    ax.set(xlabel="severity", ylabel="test accuracy (%)", xticks=[1, 2, 3], ylim=(0, 101),
           title=f"accuracy under corruption ({results['images']} MNIST test images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: the lines fill the whole plot
    save_figure(fig, path)


def per_class_scores(confusion: torch.Tensor) -> list[dict]:
    """Precision, recall and F1 of each class from a confusion matrix [true, predicted]."""
    true_positive = confusion.diag().double()
    predicted, actual = confusion.sum(0).double(), confusion.sum(1).double()
    precision = true_positive / predicted.clamp(min=1)
    recall = true_positive / actual.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return [
        {"class": c, "precision": precision[c].item(), "recall": recall[c].item(), "f1": f1[c].item(),
         "support": int(actual[c])}
        for c in range(len(confusion))
    ]


def plot_confusion(path: Path, confusion: torch.Tensor, accuracy: float) -> None:
    from matplotlib.colors import LogNorm

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    # Log colour scale: the diagonal holds ~1000 per class, the interesting mistakes 1-10.
    image = ax.imshow(confusion.clamp(min=1).numpy(), cmap="Blues", norm=LogNorm(vmin=1, vmax=confusion.max().item()))
    n = len(confusion)
    for i in range(n):
        for j in range(n):
            if confusion[i, j]:
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if i == j else "crimson")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true",
           title=f"MNIST test confusion matrix (accuracy {100 * accuracy:.2f}%)")
    fig.colorbar(image, ax=ax, label="images (log scale)")
    save_figure(fig, path)


def report_folder(args) -> tuple[Path, str]:
    """Where the reports go, and how to name that folder in a refusal: --out-dir, else beside the weights.

    An ensemble's reports go to the folder its members share (runs/seeds/ for runs/seeds/seed*/best.pt).
    """
    if args.out_dir:
        return Path(args.out_dir), f"--out-dir {args.out_dir}"
    folder = weights_folder(args.weights)  # a report lies beside the weights it is about
    which = "the folder of --weights" if len(args.weights) == 1 else "the folder the --weights share"
    return folder, f"{folder} ({which}, where the report goes without --out-dir)"


def weights_line(args, checkpoints: list[dict]) -> str:
    if len(checkpoints) > 1:
        return f"weights: an ensemble of {len(checkpoints)} models, the mean of their probabilities"
    val_acc = checkpoints[0].get("metrics", {}).get("val_acc")
    chosen = f", validation accuracy {100 * val_acc:.2f}%" if isinstance(val_acc, float) else ""
    return f"weights: {args.weights[0]} (epoch {checkpoints[0].get('epoch', '?')}{chosen})"


def evaluate_ensemble(ensemble: Ensemble, images, labels, args, checkpoints: list[dict]) -> tuple[dict, list[dict]]:
    """The ensemble's result and each member's test accuracy and loss, the latter printed as a table.

    """
    results = evaluate_members(ensemble.members, images, labels, args.weights, args.batch_size, args.precision)
    rows = [{"weights": path, "epoch": checkpoint.get("epoch"), "accuracy": result["accuracy"], "loss": result["loss"]}
            for path, checkpoint, result in zip(args.weights, checkpoints, results)]
    width = max(len(row["weights"]) for row in rows)
    print(f"{'member':<{width}}  epoch  test acc  test loss")
    for row in rows:
        print(f"{row['weights']:<{width}}  {row['epoch'] if row['epoch'] is not None else '?':>5}  "
              f"{100 * row['accuracy']:7.2f}%  {row['loss']:9.4f}")
    print()
    return score(Ensemble.combine([result["logits"] for result in results]), labels), rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = pick_device(args.device)
    args.precision = "fp32" if args.int8 else evaluation_precision(device, args.precision)  # int8 needs no autocast
    keep_freed_memory()
    out_dir, where = report_folder(args)
    model, checkpoints = load_models(args.weights, device)
    check_writable_dir(out_dir, where)
    if args.int8:  # before the test images are loaded, so that --int8 off the CPU is refused at once
        model = int8_model(model, args.data_dir, args.batch_size, device)
    images, labels = data.load_test(args.data_dir, device)

    synchronize(device)
    started = time.perf_counter()
    if isinstance(model, Ensemble):
        result, members = evaluate_ensemble(model, images, labels, args, checkpoints)
    else:
        result, members = evaluate_split(model, images, labels, args.batch_size, args.precision, desc="test"), None
    synchronize(device)
    seconds = time.perf_counter() - started

    predictions = result["logits"].argmax(1).cpu()
    truth = result["labels"].cpu()
    confusion = torch.bincount(truth * 10 + predictions, minlength=100).reshape(10, 10)
    classes = per_class_scores(confusion)
    errors = int((predictions != truth).sum())
    precision = "int8" if args.int8 else LABELS[args.precision]

    print(weights_line(args, checkpoints))
    print(f"test accuracy: {100 * result['accuracy']:.2f}% ({result['count'] - errors}/{result['count']}, "
          f"{errors} errors)")
    print(f"test loss: {result['loss']:.4f}")
    print(f"evaluated on {device} ({precision}) in {seconds:.1f}s, {result['count'] / seconds:,.0f} images/s")
    print("\nclass  precision  recall     f1  support")
    for row in classes:
        print(f"{row['class']:>5}  {100 * row['precision']:8.2f}%  {100 * row['recall']:5.2f}%  "
              f"{100 * row['f1']:5.2f}%  {row['support']:>7}")

    report = ({"weights": args.weights[0], "epoch": checkpoints[0].get("epoch")} if members is None
              else {"weights": args.weights, "members": members})
    report |= {"accuracy": result["accuracy"], "loss": result["loss"], "errors": errors, "count": result["count"],
               "device": str(device), "precision": precision, "seconds": seconds, "per_class": classes,
               "confusion_matrix": confusion.tolist()}
    report_path = out_dir / report_name(TEST_REPORT, len(args.weights))
    figure_path = out_dir / report_name(CONFUSION_MATRIX, len(args.weights))
    with all_or_none() as stage:  # never a new report beside the confusion matrix of other weights
        write_json(stage(report_path), report)
        plot_confusion(stage(figure_path), confusion, result["accuracy"])
    print(f"\nwrote {report_path} and {figure_path}")
    if args.robustness:
        robustness_report(model, images, labels, args, out_dir, len(args.weights))


if __name__ == "__main__":
    run_cli(main)
