"""matplotlib without a display: the backend choice, atomic figure saves, windows, and train.py's learning curves."""
from __future__ import annotations

import sys
from pathlib import Path

from lib.common import UserError
from lib.files import atomic_write, check_writable_dir


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


def check_figure_path(path: str | Path, what: str) -> None:
    """Fail before any work is done if a figure could not be saved to `path`.

    That is: a format matplotlib does not write (it goes by the extension), or a folder that is missing or not
    writable.
    """
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if Path(path).suffix[1:].lower() not in formats:
        raise UserError(f"{what} {path}: end the name with an extension matplotlib can write "
                        f"({', '.join(sorted(formats))})")
    check_writable_dir(Path(path).parent, f"{what} {path}", must_exist=True)


def opens_windows(plt) -> bool:
    """Whether matplotlib's backend draws on a screen: where there is no display it picks a file-only one."""
    from matplotlib.backends import BackendFilter, backend_registry

    return plt.get_backend().lower() not in backend_registry.list_builtin(BackendFilter.NON_INTERACTIVE)


def show_window(plt, path: str) -> None:
    """plt.show(), or a note where there is no display."""
    if not opens_windows(plt):
        print(f"note: no display to open a window on (matplotlib backend {plt.get_backend()}); the figure is in {path}",
              file=sys.stderr)
        return
    plt.show()


def plot_curves(path: Path, history: list[dict]) -> None:
    """train.py's curves.png: loss and accuracy per epoch of each split recorded."""
    plt = pyplot()
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    splits = (("train", "train (augmented, label-smoothed)"), ("val", "validation"),
              ("test", "test (not used to choose)"))
    for key, label in splits:
        if any(row.get(f"{key}_loss") is not None for row in history):
            ax_loss.plot(epochs, [row[f"{key}_loss"] for row in history], "o-", label=label)
            ax_acc.plot(epochs, [100 * row[f"{key}_acc"] for row in history], "o-", label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs, not 1.2, 1.4, ...
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
