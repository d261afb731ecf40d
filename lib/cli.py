"""Command lines: one-line errors, checked argument types, the flags scripts share, progress bars."""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, Iterable

from tqdm import tqdm

from lib.common import UserError


def run_cli(main: Callable[[], None]) -> None:
    """Run a script's main(): UserError becomes 'error: ...' and its exit code, Ctrl-C exits 130.

    A reader that stops early (`python test.py | head -3`) ends the script quietly with exit code 1, as the Python
    docs advise, instead of with a BrokenPipeError traceback.
    """
    try:
        main()
        sys.stdout.flush()  # here, so that a closed pipe is noticed inside the try and not at interpreter exit
    except BrokenPipeError:
        # Python flushes stdout once more on exit; pointing it at devnull keeps that from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it says something: "(default: True)" on a --no-X switch would read backwards."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or isinstance(action.default, (bool, list)):
            return action.help or ""
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are one line on stderr (via UserError, exit 2) instead of usage text."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=_HelpFormatter, **kwargs)

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


def progress(iterable: Iterable | None = None, *, show: bool = True, **options) -> tqdm:
    """A tqdm bar with ETA, on a terminal only: in a log the scripts' own lines say how far they are."""
    return tqdm(iterable, leave=False, dynamic_ncols=True, disable=not (show and sys.stderr.isatty()), **options)


# The flags several scripts take, defined once so that they mean the same everywhere.
SHARED_FLAGS = {
    "--weights": dict(default="checkpoints/best.pt", help="checkpoint written by train.py"),
    "--data-dir": dict(help="folder containing MNIST/raw (default: $MNIST_DATA_DIR, else ./data; downloaded if "
                            "missing)"),
    "--device": dict(default="auto", help="auto, cpu, cuda or mps"),
    "--precision": dict(default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                        help="auto: bf16 on GPUs from compute capability 8.0 and on CPUs with bf16 instructions, fp16 "
                             "with loss scaling on older GPUs that are fast at it (T4, V100, P100), else fp32 "
                             "(lib.device.choose_precision); bf16 or fp16 on a CPU without them is emulated, "
                             "each an order of magnitude slower than fp32"),
    "--no-amp": dict(dest="precision", action="store_const", const="fp32", default=argparse.SUPPRESS,
                     help="the same as --precision fp32"),
}


def add_shared_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *flags: str) -> None:
    """Add the named SHARED_FLAGS to `parser` (or to one of its argument groups)."""
    for flag in flags:
        parser.add_argument(flag, **SHARED_FLAGS[flag])


def add_weights_flag(parser: argparse.ArgumentParser, ensemble_outputs: str) -> None:
    """--weights taking one checkpoint, or several, which make an ensemble; `ensemble_outputs` says where its go."""
    default = SHARED_FLAGS["--weights"]["default"]
    parser.add_argument("--weights", nargs="+", default=[default], metavar="PATH",
                        help=f"checkpoint written by train.py (default: {default}); several "
                             f"make an ensemble, the mean of their probabilities: {ensemble_outputs}")


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def float_between(low: float, high: float = math.inf, high_allowed: bool = True) -> Callable[[str], float]:
    """An argparse type: a finite number from low to high, high itself only if high_allowed.

    A value torch would reject mid-setup with a traceback is refused as the command line is read.
    """
    wanted = (f"{low:g} or more" if high == math.inf
              else f"from {low:g} to {high:g}" if high_allowed else f"from {low:g} to below {high:g}")

    def parse(text: str) -> float:
        value = float(text)
        if not (math.isfinite(value) and low <= value and (value <= high if high_allowed else value < high)):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value

    parse.__name__ = "float"  # argparse's own message for a non-number: "invalid float value: 'x'"
    return parse


def random_seed(text: str) -> int:
    """An argparse type: a seed from 0 to 2**32 - 1, numpy's range.

    That keeps data.py's per-epoch seeds (seed * 100_003 + epoch) within the 64 bits torch's generators take.
    """
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be from 0 to {2**32 - 1}, got {text}")
    return value
