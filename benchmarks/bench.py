"""Training and evaluation throughput: the typical peer pipeline vs ours, same ResNet-18, same 32x32 inputs.

    python benchmarks/bench.py                    # on the best device present
    python benchmarks/bench.py --device cpu --steps 5

Peer: torchvision MNIST -> PIL Resize(32) -> ToTensor -> Normalize per image in a DataLoader, fp32, NCHW, batch 128.
Ours: the whole split resized once and kept on the device, on-device augmentation, train.py's precision (--precision),
channels_last,
batch 512 on a GPU and 128 on a CPU, on CUDA fused SGD and the step replayed as CUDA graphs (train.py's defaults;
a second row without the graphs); evaluation with batch norm folded into the convolutions, as test.py does, and on
a CPU also int8 evaluation, as test.py --int8 does. On a CPU ours also runs as train.py does there (the last stage
NCHW, freed memory kept by the C library); the peer runs first, in the process as Python starts it.
Each is timed over --steps steps after --warmup untimed ones, synchronised.

--compile adds our training step under torch.compile (mode reduce-overhead: fused kernels, on a GPU replayed as CUDA
graphs), and prints how long its first step took, which is the compile time. Run twice, the second run reads the
first one's kernels from inductor's on-disk cache: that is the compile time of every run after the first.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import data
from lib.cli import ArgumentParser, add_shared_flags, positive_float, positive_int, progress, run_cli
from lib.device import LABELS, choose_precision, keep_freed_memory, loss_scaler, pick_device, synchronize
from lib.inference import EVAL_BATCH_SIZE, fold_batchnorm, predict_logits, quantize_int8
from lib.training import compile_training_step, default_batch_size, graph_training_step, sgd, training_step
from model import ResNet18, to_device

TRAIN_GFLOP, FORWARD_GFLOP = 3.32, 1.11  # per 32x32 image, counted with torch.utils.flop_counter.FlopCounterMode


def parse_args(argv=None):
    parser = ArgumentParser(description="Throughput of the peer pipeline vs ours.")
    add_shared_flags(parser, "--device", "--data-dir", "--precision", "--no-amp")
    parser.add_argument("--steps", type=positive_int, default=50, help="timed steps per measurement")
    parser.add_argument("--warmup", type=positive_int, default=10, help="untimed steps first")
    parser.add_argument("--batch-size", type=positive_int,
                        help="our training batch size (default: train.py's on this device)")
    parser.add_argument("--eval-batch-size", type=positive_int, default=EVAL_BATCH_SIZE,
                        help="our evaluation batch size")
    parser.add_argument("--peer-batch-size", type=positive_int, default=128, help="the peer pipeline's batch size")
    parser.add_argument("--profile", action="store_true",
                        help="also print where our steps' time goes, kernel by kernel")
    parser.add_argument("--compile", action="store_true",
                        help="also time our training step under torch.compile (mode reduce-overhead), first step "
                             "(compiling) reported apart")
    parser.add_argument("--peak-tflops", type=positive_float, default=800.0,
                        help="the GPU's bf16 matrix peak, for the ceiling column")
    return parser.parse_args(argv)


def peer_batches(data_dir, train: bool, batch_size: int, device: torch.device):
    """What typical ResNet-18 MNIST repos do: PIL transforms per image in DataLoader workers, fp32 NCHW."""
    import torchvision
    from torchvision import transforms

    data.load_split(data_dir, train)  # the same checks and one-line errors as ours
    transform = transforms.Compose([transforms.Resize(32), transforms.ToTensor(),
                                    transforms.Normalize((data.MEAN,), (data.STD,))])
    dataset = torchvision.datasets.MNIST(data.resolve_data_dir(data_dir), train=train, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=True,
                                         num_workers=min(4, os.cpu_count() or 1), pin_memory=device.type == "cuda",
                                         persistent_workers=True)
    while True:
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def our_batches(images, labels, batch_size: int, augment: bool):
    """Full batches only, so that one captured graph serves every step.

    train.py captures a second graph for an epoch's shorter last batch.
    """
    epoch = 0
    while True:
        batches = data.batches(images, labels, batch_size, shuffle=augment, augment=augment, epoch=epoch)
        yield from (batch for batch in batches if len(batch[1]) == batch_size)
        epoch += 1


def images_per_second(step, batches, steps: int, warmup: int, device: torch.device, what: str) -> float:
    bar = progress(total=warmup + steps, desc=what, unit="step")  # minutes on a CPU
    for _ in range(warmup):
        step(*next(batches))
        bar.update()
    synchronize(device)
    started, count = time.perf_counter(), 0
    for _ in range(steps):
        x, y = next(batches)
        step(x, y)
        count += len(y)
        bar.update()
    synchronize(device)
    seconds = time.perf_counter() - started
    bar.close()
    return count / seconds


def print_profile(title: str, step, batches, device: torch.device, steps: int = 3) -> None:
    """The busiest kernels of a few steps (torch.profiler), by their own time on the device that runs them."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        for _ in range(steps):
            step(*next(batches))
        synchronize(device)
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\n{title}, {steps} steps:\n{profiler.key_averages().table(sort_by=sort_by, row_limit=15)}")


def measure(device, batches_train, batches_eval, ours: bool, args, graphs: bool = False, compiled: bool = False,
            profile: bool = False) -> tuple[float, float | None]:
    """(train, eval) images/s, by train.py's settings where `ours`, else by the peer's.

    Ours: args.precision, channels_last, fused SGD, train.py's training step and test.py's folded evaluation.

    `compiled` times training alone (eval None): its first step, the compiling one, is timed and printed apart.
    """
    torch.manual_seed(0)
    precision = args.precision if ours else "fp32"
    scaler = loss_scaler(device, precision)
    model = to_device(ResNet18(), device, channels_last=ours)
    optimizer = sgd(model, fused=ours and device.type == "cuda")  # and the step below: train.py's own
    forward = model
    if graphs:
        forward = graph_training_step(model, next(batches_train)[0], precision)
    elif compiled:
        forward = compile_training_step(model)

    def train_step(x, y):
        training_step(forward, optimizer, scaler, x, y, precision)

    model.train()
    who = ("ours" + (" + CUDA graphs" if graphs else " + torch.compile" if compiled else "")) if ours else "peer"
    if compiled:
        started = time.perf_counter()
        train_step(*next(batches_train))
        synchronize(device)
        print(f"torch.compile: first training step (compiling) {time.perf_counter() - started:.1f} s", flush=True)
    train = images_per_second(train_step, batches_train, args.steps, args.warmup, device, f"{who}: training")
    if compiled:
        return train, None
    inference_model = fold_batchnorm(model) if ours else model.eval()  # folded once: predict_logits keeps it as it is

    @torch.no_grad()
    def eval_step(x, y):
        if ours:  # test.py's path
            predict_logits(inference_model, [x], precision).argmax(1)
        else:  # the peer's: batch norm unfolded, fp32
            inference_model(x).argmax(1)

    evaluate = images_per_second(eval_step, batches_eval, args.steps, args.warmup, device, f"{who}: evaluation")
    if profile:
        print_profile(f"our training step (batch {args.batch_size})", train_step, batches_train, device)
        print_profile(f"our evaluation step (batch {args.eval_batch_size})", eval_step, batches_eval, device)
    return train, evaluate


def measure_int8_evaluation(batches_train, batches_eval, args) -> float:
    """CPU evaluation images/s of an int8 ResNet-18 (test.py --int8); speed does not depend on the weights' values."""
    torch.manual_seed(0)
    quantized = quantize_int8(to_device(ResNet18(), torch.device("cpu")), [next(batches_train)[0] for _ in range(2)])

    @torch.no_grad()
    def eval_step(x, y):
        quantized(x).argmax(1)

    cpu = torch.device("cpu")
    return images_per_second(eval_step, batches_eval, args.steps, args.warmup, cpu, "ours: int8 evaluation")


def main(argv=None) -> None:
    args = parse_args(argv)
    device = pick_device(args.device)
    args.batch_size = args.batch_size or default_batch_size(device)
    precision = choose_precision(device, args.precision)
    args.precision = precision.name
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device} ({os.cpu_count()} cores)"
    print(f"device: {name}; torch {torch.__version__}; {args.steps} timed steps after {args.warmup} warm-up; ours in "
          f"{precision.reason}")

    peer = measure(device, peer_batches(args.data_dir, True, args.peer_batch_size, device),
                   peer_batches(args.data_dir, False, args.peer_batch_size, device), ours=False, args=args)
    keep_freed_memory()  # from here on, as train.py and test.py run; the peer ran with the C library's defaults
    (train_x, train_y), _ = data.load_train_val(args.data_dir, 5000, None, device)
    test_x, test_y = data.load_test(args.data_dir, device)

    def measure_ours(graphs: bool = False, compiled: bool = False, profile: bool = False) -> tuple[float, float | None]:
        return measure(device, our_batches(train_x, train_y, args.batch_size, augment=True),
                       our_batches(test_x, test_y, args.eval_batch_size, augment=False), ours=True, args=args,
                       graphs=graphs, compiled=compiled, profile=profile)

    on_gpu = device.type == "cuda"
    what = LABELS[args.precision] + (" + loss scaling" if args.precision == "fp16" else "")
    rows = [(f"peer: PIL DataLoader, fp32, NCHW, batch {args.peer_batch_size}", *peer),
            (f"ours: on-device, {what}, channels_last, batch {args.batch_size}{', eager' if on_gpu else ''}",
             *measure_ours(profile=args.profile))]
    if on_gpu:  # train.py's default there
        rows.append(("ours + CUDA graphs", *measure_ours(graphs=True)))
    ours = rows[-1]
    if args.compile:
        rows.append(("ours + torch.compile (reduce-overhead)", *measure_ours(compiled=True)))
    if device.type == "cpu":
        int8 = measure_int8_evaluation(our_batches(train_x, train_y, args.batch_size, augment=True),
                                       our_batches(test_x, test_y, args.eval_batch_size, augment=False), args)
        rows.append(("ours: int8 evaluation (test.py --int8)", None, int8))
    # A FLOP ceiling only on the GPU, where --peak-tflops describes the device.
    ceiling_columns = " train % of FLOP ceiling | eval % of FLOP ceiling |" if on_gpu else ""
    print(f"\n| pipeline | train images/s | eval images/s |{ceiling_columns}")
    print(f"| --- | ---: | ---: |{' ---: | ---: |' if on_gpu else ''}")
    for label, train, evaluate in rows:
        ceiling = "".join("  |" if rate is None else f" {100 * rate * gflop / (args.peak_tflops * 1e3):.1f}% |"
                          for rate, gflop in ((train, TRAIN_GFLOP), (evaluate, FORWARD_GFLOP))) if on_gpu else ""
        rates = " | ".join("" if rate is None else f"{rate:,.0f}" for rate in (train, evaluate))
        print(f"| {label} | {rates} |{ceiling}")
    print(f"| ratio ours / peer | {ours[1] / peer[0]:.2f}x | {ours[2] / peer[1]:.2f}x |{' | |' if on_gpu else ''}")
    if device.type == "cpu":
        print(f"| ratio int8 / peer | | {int8 / peer[1]:.2f}x |")


if __name__ == "__main__":
    run_cli(main)
