"""Does bf16 autocast change what the model predicts? One checkpoint, the whole test set, fp32 vs bf16.

    python benchmarks/precision.py                       # checkpoints/best.pt on the best device present
    python benchmarks/precision.py --device cpu --weights checkpoints/best.pt
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import data  # noqa: E402
from model import evaluate, load_model  # noqa: E402
from utils import ArgumentParser, UserError, bf16_supported, pick_device, positive_int, run_cli, synchronize  # noqa: E402


def parse_args(argv: list[str] | None = None):
    parser = ArgumentParser(description="Test-set predictions of one checkpoint in fp32 and in bf16 autocast, compared.")
    parser.add_argument("--weights", default="checkpoints/best.pt", help="checkpoint written by train.py")
    parser.add_argument("--data-dir", help="folder containing MNIST/raw (default: $MNIST_DATA_DIR, else ./data)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch-size", type=positive_int, default=1000, help="images per forward pass")
    parser.add_argument("--limit", type=positive_int, help="use only the first N test images")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = pick_device(args.device)
    if not bf16_supported(device):
        raise UserError(f"{device} has no bf16 in hardware, so train.py and test.py already run it in fp32; nothing to compare")
    model, _ = load_model(args.weights, device)
    images, labels = data.load_test(args.data_dir, device)
    images, labels = images[: args.limit], labels[: args.limit]

    results = {}
    for name, amp in (("fp32", False), ("bf16 autocast", True)):
        synchronize(device)
        started = time.perf_counter()
        result = evaluate(model, data.batches(images, labels, args.batch_size), amp)
        synchronize(device)
        results[name] = result["logits"].argmax(1), result["accuracy"], time.perf_counter() - started

    print(f"{args.weights} on {device}, {len(labels)} test images\n")
    print("| precision | accuracy | errors | seconds |\n| --- | ---: | ---: | ---: |")
    for name, (predictions, accuracy, seconds) in results.items():
        print(f"| {name} | {100 * accuracy:.2f}% | {int((predictions != labels).sum())} | {seconds:.1f} |")
    fp32, bf16 = results["fp32"][0], results["bf16 autocast"][0]
    differ = fp32 != bf16
    print(f"\npredictions that differ: {int(differ.sum())} of {len(labels)} "
          f"(fp32 right on {int((differ & (fp32 == labels)).sum())}, bf16 right on {int((differ & (bf16 == labels)).sum())})")
    return {"differ": int(differ.sum()), "count": len(labels)}


if __name__ == "__main__":
    run_cli(main)
