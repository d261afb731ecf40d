"""Small helpers shared by the scripts: one-line errors, device choice, mixed precision, progress bars, atomic writes."""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from tqdm import tqdm


class UserError(Exception):
    """A problem the user can fix; printed as one line on stderr, never as a traceback."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


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
        if action.default is None or isinstance(action.default, bool):
            return action.help or ""
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are one line on stderr (via UserError, exit 2) instead of usage text."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=_HelpFormatter, **kwargs)

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


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
    """An argparse type: a finite number from low to high (high itself only if high_allowed), so that a value torch
    would reject mid-setup with a traceback is refused as the command line is read."""
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
    """An argparse type: a seed from 0 to 2**32 - 1, numpy's range, small enough that data.py's per-epoch seeds
    (seed * 100_003 + epoch) stay within the 64 bits torch's generators take."""
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be from 0 to {2**32 - 1}, got {text}")
    return value


def pick_device(name: str) -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU; an explicit choice must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA GPU is available (try --device auto or cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was requested but Apple's MPS backend is not available (try --device auto or cpu)")
    if name not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {name!r}: choose auto, cpu, cuda or mps")
    return torch.device(name)


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast pays off on CUDA GPUs and on CPUs with bf16 in hardware; elsewhere it is emulated and slow.

    On x86 that means AVX512-BF16 or AMX: oneDNN also "supports" bf16 on plain AVX512 by converting to fp32,
    which is no faster than fp32 and less accurate.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            if platform.machine().lower() in ("x86_64", "amd64", "x86", "i386", "i686"):
                return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # Arm: bf16 instructions (e.g. Neoverse V1)
        except (AttributeError, RuntimeError):
            return False
    return False


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast where it helps (see bf16_supported), otherwise plain fp32."""
    if enabled and bf16_supported(device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def keep_freed_memory() -> None:
    """Let glibc keep freed memory for the next batch instead of handing it back to the OS (elsewhere a no-op).

    By default glibc maps every block over 32 MiB (a batch's activations) afresh and unmaps it when freed, so each
    batch faults all that memory back in, zero-filled page by page: a fifth or more of evaluation time on the dev
    CPU, and training at batch 512 (67 MB blocks) about 30% slower than at 128, whose blocks mostly stay under it
    (BENCHMARKS.md). PyTorch's CPU tuning guide swaps in jemalloc or tcmalloc for this; two mallopt settings do it
    with the C library already there. Memory is still reused within the process, only no longer returned early.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, for one)
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from glibc's malloc.h
    mallopt(M_MMAP_MAX, 0)  # large blocks come from the heap, like small ones, where freed ones are reused
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # and the heap's free top is not given back to the OS


def progress(iterable: Iterable | None = None, *, show: bool = True, **options) -> tqdm:
    """A tqdm bar with ETA, on a terminal only: in a log the scripts' own lines say how far they are."""
    return tqdm(iterable, leave=False, dynamic_ncols=True, disable=not (show and sys.stderr.isatty()), **options)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings measure the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_staged: set[Path] = set()  # temporary files that atomic_write blocks still open will rename into place


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    Readers never see a half-written file: a crash, a full disk or a second Ctrl-C leaves the old file intact. A write
    the system refuses (a full disk or quota, a folder removed meanwhile) is a UserError naming the file, exit code 1.
    Given a path an open block yielded (save_checkpoint into a file of all_or_none), it yields that path itself.
    """
    path = Path(path)
    if path in _staged:
        yield path
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Keep the real suffix last so tools that infer the format from the name (matplotlib) still work.
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
        os.close(fd)
        umask = os.umask(0o022)  # reading the umask means setting it: put it straight back
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # as open() would have made it: mkstemp's files are private (0600)
    except OSError as error:
        raise write_failed(path, error) from None
    tmp = Path(tmp_name)
    _staged.add(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise write_failed(path, error) from None
        raise
    finally:
        _staged.discard(tmp)


@contextlib.contextmanager
def all_or_none() -> Iterator[Callable[[str | Path], Path]]:
    """Write several files as one: `stage(path)` gives the temporary path to write `path` to, and each is renamed into
    place only once the whole block has succeeded. A write that fails, or an interruption, leaves every file as it was.

    Write each file right after staging it, so that a failure is reported under that file's name.
    """
    with contextlib.ExitStack() as stack:
        yield lambda path: stack.enter_context(atomic_write(path))


def write_failed(path: Path, error: OSError) -> UserError:
    kept = f" (the earlier {path.name} is kept whole)" if path.exists() else ""
    return UserError(f"could not write {path}: {error.strerror or error}{kept}", exit_code=1)


def write_json(path: str | Path, data: dict) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def pyplot(interactive: bool = False):
    """matplotlib.pyplot, on the file-only Agg backend unless a window is wanted (servers have no display)."""
    import matplotlib

    if not interactive:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, close: bool = True) -> None:
    """Save a matplotlib figure atomically and (unless it is still to be shown) release its memory."""
    import matplotlib.pyplot as plt

    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    if close:
        plt.close(fig)


def check_writable_dir(folder: str | Path, what: str, must_exist: bool = False) -> None:
    """Fail before any work is done if outputs could not be written into `folder` at the end: it, or while it is still
    to be created the nearest folder above it that exists, is a file or not writable; with must_exist, it is missing."""
    given = Path(folder)
    if must_exist and not given.exists():
        raise UserError(f"{what}: folder {given} does not exist")
    existing = next(p for p in (given.absolute(), *given.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{what}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what}: cannot write in {existing} (no permission, or a read-only file system)")


_claimed: dict[Path, int] = {}  # folder -> the open descriptor whose lock this process holds until it ends


def claim_folder(folder: str | Path, refusal: str) -> None:
    """Refuse to go on (UserError(refusal)) while another process has claimed `folder`, creating it if need be: two
    runs saving into one folder would mix their files.

    The claim is an advisory lock on the folder itself (flock), so nothing is left behind, and the system drops it
    whenever the process ends, SIGKILL included. Where there are no such locks (Windows, some network file systems)
    nothing is checked. A process may claim a folder it holds again.
    """
    try:
        import fcntl
    except ImportError:
        return
    folder = Path(folder).resolve()
    if folder in _claimed:
        return
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(descriptor)
        if isinstance(error, BlockingIOError):
            raise UserError(refusal) from None
        return
    _claimed[folder] = descriptor


def check_figure_path(path: str | Path, what: str) -> None:
    """Fail before any work is done if a figure could not be saved to `path`: a format matplotlib does not write
    (it goes by the extension), or a folder that is missing or not writable."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if Path(path).suffix[1:].lower() not in formats:
        raise UserError(f"{what} {path}: end the name with an extension matplotlib can write ({', '.join(sorted(formats))})")
    check_writable_dir(Path(path).parent, f"{what} {path}", must_exist=True)
