"""Show what the model predicts: on random test digits, on those it gets wrong, or on your own photos and scans.

    python predict.py                       # 16 test digits -> checkpoints/predictions.png
    python predict.py --num 36 --seed 1 --show
    python predict.py --errors [--json]     # the test digits the model gets wrong -> checkpoints/errors.png
    python predict.py --images my_digits/ photo.jpg [--json]
    python predict.py --draw                # draw a digit with the mouse and watch the model guess
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import data
from lib import images as user_images
from lib import inference
from lib.cli import ArgumentParser, add_shared_flags, add_weights_flag, positive_int, random_seed, run_cli
from lib.common import UserError
from lib.device import evaluation_precision, pick_device
from lib.drawpad import DrawPad
from lib.inference import EVAL_BATCH_SIZE, evaluate_split, load_models, prediction_records
from lib.plots import check_figure_path, opens_windows, pyplot, save_figure, show_window
from lib.reports import ERRORS_FIGURE, PREDICTIONS_FIGURE, report_name, weights_folder

SAMPLES_SHOWN = 16  # --num's default for random test digits
ERRORS_SHOWN = 64  # and with --errors, a cap: a trained model makes about 30 mistakes, a half-trained one thousands
GRID_PANELS = 256  # at most, in one figure of digits: 16x16 stays legible and quick; --json and the text list them all
USER_IMAGES_DRAWN = 32  # at most, of --images, each beside what the model saw


def parse_args(argv: list[str] | None = None):
    parser = ArgumentParser(description="Plot sample MNIST test digits with the model's predicted labels.")
    add_weights_flag(parser, "its figures are named ensemble_*, in the folder the checkpoints share")
    add_shared_flags(parser, "--data-dir")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--images", nargs="+", metavar="PATH",
                      help="classify these image files / folders instead of test digits")
    parser.add_argument("--json", action="store_true",
                        help="print the predictions as JSON (the other messages go to stderr)")
    what.add_argument("--errors", action="store_true",
                      help="show the test digits the model gets wrong, most confident mistakes first, instead of "
                           "random ones")
    what.add_argument("--draw", action="store_true",
                      help="draw digits with the mouse in a window and watch the model guess; on the CPU unless "
                           "--device says otherwise")
    parser.add_argument("--save-dir", default="drawings",
                        help="where --draw's s key saves a drawing, as a PNG named after the predicted digit")
    parser.add_argument("--num", type=positive_int,
                        help=f"how many test digits to show (default: {SAMPLES_SHOWN}; with --errors {ERRORS_SHOWN})")
    parser.add_argument("--seed", type=random_seed, default=0, help="which random digits to pick")
    parser.add_argument("--out", help=f"where to save the figure (default: {PREDICTIONS_FIGURE}, with --errors "
                                      f"{ERRORS_FIGURE}, in the folder of --weights)")
    parser.add_argument("--show", action="store_true", help="also open the figure in a window")
    add_shared_flags(parser, "--device", "--precision", "--no-amp")
    return parser.parse_args(argv)


def records_of_test_digits(indices: torch.Tensor, labels: torch.Tensor, probabilities: torch.Tensor,
                           members: int = 1) -> list[dict]:
    """--json's records of test digits: index in the test set, true label, then prediction_records' fields."""
    return [{"test_index": int(i), "label": int(label), **record}
            for i, label, record in zip(indices, labels, prediction_records(probabilities, members))]


def plot_grid(path: str, images: torch.Tensor, probabilities: torch.Tensor, labels: torch.Tensor | None, show: bool,
              heading: str = "predicted (confidence)") -> None:
    """One panel per image (the first GRID_PANELS), titled 'predicted (confidence)' and, when known, the true label;
    mistakes in red."""
    plt = pyplot(interactive=show)
    n = min(len(images), GRID_PANELS)
    if n < len(images):
        heading += f"; the first {n} of {len(images)}"
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False, layout="constrained")
    confidence, predicted = probabilities.max(1)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        title = f"{predicted[i]} ({100 * confidence[i]:.0f}%)"
        wrong = labels is not None and predicted[i] != labels[i]
        if labels is not None:
            title += f"\ntrue {labels[i]}" + (" ✗" if wrong else "")
        ax.set_title(title, fontsize=9, color="crimson" if wrong else "black")
    fig.suptitle(heading, fontsize=10)  # constrained layout keeps it clear of the top row's titles (tight_layout: not)
    save_figure(fig, path, close=not show)
    if show:
        show_window(plt, path)


def first_drawn(count: int, most: int = GRID_PANELS) -> str:
    """What to add to 'figure saved to ...' where a figure of `count` images drew only the first `most`."""
    return f" (the first {most} drawn)" if count > most else ""


def preview(gray: torch.Tensor, side: int = 240) -> torch.Tensor:
    """A user's image at most `side` pixels a side (its panel: 2 inches at 120 dpi), so that a folder of photos is
    never all held in memory at full size."""
    scale = side / max(gray.shape)
    return F.interpolate(gray[None, None], scale_factor=scale, mode="area")[0, 0] if scale < 1 else gray


def plot_user_images(path: str, originals: list[torch.Tensor], inputs: torch.Tensor, probabilities: torch.Tensor,
                     names: list[str], show: bool) -> None:
    """Each user image (previews of the first USER_IMAGES_DRAWN of those named) beside the 32x32 digit the model saw,
    titled with its prediction."""
    plt = pyplot(interactive=show)
    shown = len(originals)
    fig, axes = plt.subplots(shown, 2, figsize=(4, 2 * shown), squeeze=False)
    confidence, predicted = probabilities.max(1)
    for i in range(shown):
        axes[i, 0].imshow(originals[i].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_title(names[i][-28:], fontsize=8)
        axes[i, 1].imshow(inputs[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[i, 1].set_title(f"model saw: {predicted[i]} ({100 * confidence[i]:.0f}%)", fontsize=9)
        for ax in axes[i]:
            ax.axis("off")
    if shown < len(names):
        fig.suptitle(f"first {shown} of {len(names)} images", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, close=not show)
    if show:
        show_window(plt, path)


def tell(args, line: str) -> None:
    """A line for the reader: on stdout, or on stderr with --json, whose stdout holds the JSON alone."""
    print(line, file=sys.stderr if args.json else sys.stdout)


def predict_images(model: torch.nn.Module, args) -> None:
    """Classify the user's image files; a file that fails is reported and skipped, and the exit code says so."""
    files = user_images.find_images(args.images)
    if not files:
        suffixes = ", ".join(sorted(user_images.IMAGE_SUFFIXES))
        raise UserError(f"no image files ({suffixes}) found in {' '.join(args.images)}")
    originals, digits, names, failed = [], [], [], 0
    for path in files:
        try:
            gray = user_images.read_image(path)
            digits.append(user_images.digit_to_mnist(gray))
        except UserError as error:
            message = str(error) if str(error).startswith(str(path)) else f"{path}: {error}"
            print(f"error: {message}", file=sys.stderr)
            failed += 1
            continue
        if len(originals) < USER_IMAGES_DRAWN:
            originals.append(preview(gray))
        names.append(str(path))
    if digits:
        inputs = data.to_model_size(torch.stack(digits))
        probabilities = inference.probabilities(model, inputs, args.precision)
        records = prediction_records(probabilities, args.members)
        results = [{"path": name, **record} for name, record in zip(names, records)]
        if args.json:
            print(json.dumps(results, indent=2))
        else:
            for r in results:
                top3 = ", ".join(f"{t['digit']} {100 * t['probability']:.1f}%" for t in r["top3"])
                print(f"{r['path']}: {r['prediction']} ({100 * r['confidence']:.1f}%)  top-3: {top3}")
        plot_user_images(args.out, originals, inputs, probabilities, names, args.show)
        tell(args, f"figure saved to {args.out}{first_drawn(len(names), USER_IMAGES_DRAWN)}")
    if failed:
        raise UserError(f"{failed} of {len(files)} files could not be classified", exit_code=1)


def show_errors(model: torch.nn.Module, args, device: torch.device) -> None:
    """List and plot the test digits the model gets wrong, the most confident mistakes first.

    The predictions come from evaluate_split in test.py's default batches, so these are the mistakes test.py counts.
    """
    images, labels = data.load_test(args.data_dir, device)
    result = evaluate_split(model, images, labels, EVAL_BATCH_SIZE, args.precision, desc="test")
    probabilities, labels = result["logits"].softmax(1).cpu(), labels.cpu()
    confidence, predicted = probabilities.max(1)
    mistakes = (predicted != labels).nonzero().flatten()
    shown = mistakes[confidence[mistakes].argsort(descending=True, stable=True)][: args.num]
    right = 100 * (1 - len(mistakes) / len(labels))
    tell(args, f"{len(mistakes)} of {len(labels):,} test digits predicted wrongly ({right:.2f}% right)"
         + (f"; the {len(shown)} most confident:" if len(shown) < len(mistakes) else ""))
    if args.json:
        print(json.dumps(records_of_test_digits(shown, labels[shown], probabilities[shown], args.members), indent=2))
    else:
        for index in shown.tolist():
            print(f"  test image {index:>4}: true {labels[index]}, predicted {predicted[index]} "
                  f"({100 * confidence[index]:.1f}%)")
    if len(shown):
        whose = "the model's" if args.members == 1 else f"the {args.members}-model ensemble's"
        which = f"the {len(shown)} most confident of {whose}" if len(shown) < len(mistakes) else whose
        plot_grid(args.out, images[shown.to(device)].cpu(), probabilities[shown], labels[shown], args.show,
                  heading=f"{which} {len(mistakes)} mistakes on the MNIST test set, most confident first: "
                          "predicted (confidence)")
        tell(args, f"figure saved to {args.out}{first_drawn(len(shown))}")


def draw(args) -> None:
    """--draw: the pad, predicting by the batch-norm-folded model test.py evaluates."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise UserError("--draw needs a window, and there is no display here ($DISPLAY is not set); to classify "
                        "image files, use --images")
    plt = pyplot(interactive=True)
    if not opens_windows(plt):
        raise UserError(f"--draw needs a window, and matplotlib's backend {plt.get_backend()} opens none; to classify "
                        "image files, use --images")
    device = torch.device("cpu") if args.device == "auto" else pick_device(args.device)  # no GPU start-up wait
    args.precision = evaluation_precision(device, args.precision)
    model, _ = load_models(args.weights, device)
    try:
        pad = DrawPad(lambda images: inference.probabilities(model, images, args.precision), Path(args.save_dir),
                      args.json, members=args.members)
    except Exception as error:  # the display named cannot be opened: Tk's TclError, or another toolkit's
        raise UserError(f"--draw could not open a window: {str(error).splitlines()[0]}") from None
    pad.show()


def default_figure_path(args) -> str:
    """Beside the weights it shows; an ensemble's, named ensemble_*, in the folder its members share."""
    name = ERRORS_FIGURE if args.errors else PREDICTIONS_FIGURE
    return str(weights_folder(args.weights) / report_name(name, len(args.weights)))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.members = len(args.weights)  # how many models vote: --json records and figure titles say so
    if args.draw:
        draw(args)
        return
    device = pick_device(args.device)
    args.precision = evaluation_precision(device, args.precision)
    model, _ = load_models(args.weights, device)
    args.out = args.out or default_figure_path(args)
    check_figure_path(args.out, "--out")
    if args.images:
        predict_images(model, args)
        return
    if args.errors:
        args.num = args.num or ERRORS_SHOWN
        show_errors(model, args, device)
        return
    args.num = args.num or SAMPLES_SHOWN
    images, labels = data.load_test(args.data_dir, torch.device("cpu"))
    if args.num > len(images):
        raise UserError(f"--num must be at most {len(images)}, got {args.num}")
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[: args.num]
    probabilities = inference.probabilities(model, images[pick], args.precision)
    if args.json:
        print(json.dumps(records_of_test_digits(pick, labels[pick], probabilities, args.members), indent=2))
    plot_grid(args.out, images[pick], probabilities, labels[pick], args.show)
    wrong = int((probabilities.argmax(1) != labels[pick]).sum())
    tell(args, f"{args.num} test digits, {args.num - wrong} predicted correctly; figure saved to {args.out}"
               f"{first_drawn(args.num)}")


if __name__ == "__main__":
    run_cli(main)
