"""Do bf16 or fp16 autocast and int8 change what the model predicts? One checkpoint, the test set, each against fp32.

    python benchmarks/precision.py                       # checkpoints/best.pt on the best device present
    python benchmarks/precision.py --device cpu --weights checkpoints/best.pt
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import data
from lib.checkpoints import load_model
from lib.cli import ArgumentParser, add_shared_flags, positive_int, run_cli
from lib.common import UserError
from lib.device import LABELS, choose_precision, keep_freed_memory, pick_device, synchronize
from lib.inference import EVAL_BATCH_SIZE, evaluate, int8_model


def parse_args(argv: list[str] | None = None):
    parser = ArgumentParser(description="Test-set predictions of one checkpoint in fp32, in bf16 and fp16 autocast "
                                        "where the device has them in hardware, and in int8 (CPU), compared.")
    add_shared_flags(parser, "--weights", "--data-dir", "--device")
    parser.add_argument("--batch-size", type=positive_int, default=EVAL_BATCH_SIZE, help="images per forward pass")
    parser.add_argument("--limit", type=positive_int, help="use only the first N test images")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = pick_device(args.device)
    keep_freed_memory()  # as test.py does
    model, _ = load_model(args.weights, device)
    images, labels = data.load_test(args.data_dir, device)
    images, labels = images[: args.limit], labels[: args.limit]
    variants = {"fp32": (model, "fp32")}
    for precision in ("bf16", "fp16"):
        if not choose_precision(device, precision).emulated:
            variants[LABELS[precision]] = (model, precision)
    if device.type == "cpu":
        variants["int8"] = (int8_model(model, args.data_dir, args.batch_size, device), "fp32")
    if len(variants) == 1:
        raise UserError(f"{device} has neither bf16 nor fp16 in hardware, nor int8 kernels, so everything runs in "
                        "fp32; nothing to compare")

    results = {}
    for name, (variant, precision) in variants.items():
        synchronize(device)
        started = time.perf_counter()
        result = evaluate(variant, data.batches(images, labels, args.batch_size), precision)
        synchronize(device)
        results[name] = result["logits"].argmax(1), result["accuracy"], time.perf_counter() - started

    print(f"{args.weights} on {device}, {len(labels)} test images\n")
    print("| precision | accuracy | errors | seconds | predictions that differ from fp32 (fp32 right / this right) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    fp32 = results["fp32"][0]
    differ = {}
    for name, (predictions, accuracy, seconds) in results.items():
        mismatch = predictions != fp32
        differ[name] = int(mismatch.sum())
        fp32_right = int((mismatch & (fp32 == labels)).sum())
        split = f" ({fp32_right} / {int((mismatch & (predictions == labels)).sum())})" if name != "fp32" else ""
        errors = int((predictions != labels).sum())
        print(f"| {name} | {100 * accuracy:.2f}% | {errors} | {seconds:.1f} | {differ[name]}{split} |")
    return {"differ": differ, "count": len(labels)}


if __name__ == "__main__":
    run_cli(main)
