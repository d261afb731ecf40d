"""predict.py --draw: a pad to draw a digit on with the mouse, and the model's answer as you draw.

Drawing is the ink (strokes rendered as a marker on paper, with undo and clear) and knows nothing of windows, so
tests can draw through it; DrawPad is the matplotlib window around it.
"""
from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch

import data
from lib.common import UserError
from lib.files import atomic_write
from lib.images import digit_to_mnist
from lib.inference import prediction_records
from lib.plots import pyplot

PAD_PIXELS = 280  # the pad's side: ten times MNIST's, so a stroke looks smooth
PEN_RADIUS = PAD_PIXELS * 0.035  # a marker's width in proportion to the pad: MNIST's strokes to a digit's height
PREDICT_EVERY = 0.25  # seconds between predictions, and redraws of the answer, while the pen moves
SMALLEST_DIGIT = PAD_PIXELS / 8  # pixels, the longer side of the ink: below it a dot, not a digit, however scaled up
PAD_BOX = (0.02, 0.12, 0.8 * 6 / 11, 0.8)  # the pad's axes in figure fractions: a square in the 11 x 6 inch window
HINT = "draw with the left button    c or right click: clear    u: undo    s: save    q or Esc: quit"


class Drawing:
    """Strokes of a pen on a PAD_PIXELS square: dark ink on light paper, as a photo of a digit would be."""

    def __init__(self, side: int = PAD_PIXELS, radius: float = PEN_RADIUS):
        self.side, self.radius = side, radius
        self.strokes: list[list[tuple[float, float]]] = []
        self.ink = torch.zeros(side, side)
        ys, xs = torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="ij")
        self._pixels = torch.stack([xs, ys], -1)  # each pixel's centre, (x, y) in pad pixels

    def start(self, x: float, y: float) -> None:
        self.strokes.append([(x, y)])
        self._ink_segment((x, y), (x, y))

    def extend(self, x: float, y: float) -> None:
        """Continue the current stroke in a straight line, so that fast mouse movement leaves no gaps."""
        self._ink_segment(self.strokes[-1][-1], (x, y))
        self.strokes[-1].append((x, y))

    def undo(self) -> None:
        strokes = self.strokes[:-1]
        self.clear()
        for stroke in strokes:
            self.start(*stroke[0])
            for point in stroke[1:]:
                self.extend(*point)

    def clear(self) -> None:
        self.strokes = []
        self.ink.zero_()

    def blank(self) -> bool:
        return not bool(self.ink.any())

    def too_small(self) -> bool:
        """Ink too small to be a digit (a click, a speck): digit_to_mnist would blow it up to a blob."""
        rows, cols = self.ink.any(1).nonzero(), self.ink.any(0).nonzero()
        return not len(rows) or max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 < SMALLEST_DIGIT

    def image(self) -> torch.Tensor:
        """The pad as a grayscale image [side, side] in [0, 1]: white paper, black ink."""
        return 1 - self.ink

    def _ink_segment(self, a: tuple[float, float], b: tuple[float, float]) -> None:
        """Ink every pixel within the pen's radius of the segment a-b, its edge antialiased over one pixel."""
        a_, b_ = torch.tensor(a), torch.tensor(b)
        reach = self.radius + 1
        x0, x1 = (max(0, int(min(a[0], b[0]) - reach)), min(self.side, int(max(a[0], b[0]) + reach) + 1))
        y0, y1 = (max(0, int(min(a[1], b[1]) - reach)), min(self.side, int(max(a[1], b[1]) + reach) + 1))
        if x0 >= x1 or y0 >= y1:
            return
        pixels = self._pixels[y0:y1, x0:x1]
        along = b_ - a_
        t = ((pixels - a_) @ along / along.dot(along).clamp(min=1e-9)).clamp(0, 1)
        distance = (pixels - (a_ + t[..., None] * along)).norm(dim=-1)
        ink = (self.radius + 0.5 - distance).clamp(0, 1)
        self.ink[y0:y1, x0:x1] = torch.maximum(self.ink[y0:y1, x0:x1], ink)


def model_view(drawing: Drawing) -> torch.Tensor:
    """What the model sees of the drawing: digit_to_mnist's 28x28 digit, as for --images, at the model's 32x32."""
    return data.to_model_size(digit_to_mnist(drawing.image())[None, None])[0]


def answer_line(record: dict, as_json: bool) -> str:
    if as_json:
        return json.dumps(record)
    top3 = ", ".join(f"{t['digit']} {t['probability']:.2f}" for t in record["top3"])
    return f"{record['prediction']} {record['confidence']:.2f}  (top 3: {top3}; strokes: {record['strokes']})"


class DrawPad:
    """The --draw window: the pad on the left, what the model sees and its answer on the right.

    `classify` takes [N, 1, 32, 32] images in [0, 1] and returns probabilities [N, 10]; `members` is how many
    models vote in it, recorded with each answer as --images records it.
    """

    def __init__(self, classify: Callable[[torch.Tensor], torch.Tensor], save_dir: Path, as_json: bool,
                 members: int = 1):
        self.classify, self.save_dir, self.as_json, self.members = classify, save_dir, as_json, members
        self.drawing = Drawing()
        self.pen_down, self.predicted_at, self.answer = False, 0.0, None
        classify(torch.zeros(1, 1, 32, 32))  # the first call's set-up now, not in the middle of the first stroke
        plt = pyplot(interactive=True)
        for name in [key for key in plt.rcParams if key.startswith("keymap.")]:
            plt.rcParams[name] = []  # the pad's keys, not the toolbar's (s would open a save dialog)
        plt.rcParams["toolbar"] = "None"
        self.plt = plt
        self.fig = plt.figure(figsize=(11, 6))
        self.fig.canvas.manager.set_window_title("predict.py --draw")
        self._build_axes()
        for event, handler in (("button_press_event", self._press), ("motion_notify_event", self._move),
                               ("button_release_event", self._release), ("key_press_event", self._key)):
            self.fig.canvas.mpl_connect(event, handler)

    def _build_axes(self) -> None:
        self.ax_pad = self.fig.add_axes(PAD_BOX)
        self.pad_image = self.ax_pad.imshow(self.drawing.image().numpy(), cmap="gray", vmin=0, vmax=1,
                                            extent=(0, PAD_PIXELS, PAD_PIXELS, 0), interpolation="antialiased")
        self.ax_pad.set(xticks=[], yticks=[], title="draw a digit")
        self.ax_seen = self.fig.add_axes((0.56, 0.52, 0.16, 0.3))
        self.seen_image = self.ax_seen.imshow(torch.zeros(32, 32).numpy(), cmap="gray", vmin=0, vmax=1)
        self.ax_seen.set(xticks=[], yticks=[], title="what the model sees")
        self.ax_bars = self.fig.add_axes((0.56, 0.12, 0.41, 0.3))
        self.bars = self.ax_bars.bar(range(10), [0] * 10, color="tab:blue")
        self.ax_bars.set(xticks=range(10), ylim=(0, 1), xlabel="digit", ylabel="probability")
        self.verdict = self.fig.text(0.85, 0.67, "", ha="center", va="center", fontsize=60)
        self.confidence = self.fig.text(0.85, 0.52, "", ha="center", va="center", fontsize=16)
        self.fig.text(0.5, 0.03, HINT, ha="center", fontsize=10, color="dimgray")

    def show(self) -> None:
        self.plt.show()

    def _point(self, event) -> tuple[float, float] | None:
        if event.inaxes is not self.ax_pad or event.xdata is None:
            return None
        return float(event.xdata), float(event.ydata)

    def _press(self, event) -> None:
        if event.button == 3:
            self._clear()
        elif event.button == 1 and (point := self._point(event)) is not None:
            self.pen_down, self.predicted_at = True, time.perf_counter()
            self.drawing.start(*point)
            self._blit_pad()

    def _move(self, event) -> None:
        if self.pen_down and self.drawing.strokes and (point := self._point(event)) is not None:
            self.drawing.extend(*point)
            if time.perf_counter() - self.predicted_at > PREDICT_EVERY:
                self._refresh(predict=True)
            else:
                self._blit_pad()

    def _blit_pad(self) -> None:
        """Redraw the pad alone: a whole redraw per mouse event would lag, and the toolkit then drops events."""
        self.pad_image.set_data(self.drawing.image().numpy())
        self.ax_pad.draw_artist(self.pad_image)
        self.fig.canvas.blit(self.ax_pad.bbox)

    def _release(self, event) -> None:
        if event.button == 1 and self.pen_down:
            self.pen_down = False
            self._refresh(predict=True, report=True)

    def _key(self, event) -> None:
        if event.key == "c":
            self._clear()
        elif event.key == "u" and self.drawing.strokes:
            self.pen_down = False  # a stroke being drawn is the one undone: the pen lifts with it
            self.drawing.undo()
            self._refresh(predict=True, report=True)
        elif event.key == "s":
            self._save()
        elif event.key in ("q", "escape"):
            self.plt.close(self.fig)

    def _clear(self) -> None:
        self.pen_down = False
        self.drawing.clear()
        self._refresh(predict=True)

    def _refresh(self, predict: bool, report: bool = False) -> None:
        """Redraw the ink; with `predict`, the model's view and answer too; with `report`, print the answer."""
        self.pad_image.set_data(self.drawing.image().numpy())
        if predict:
            self._predict()
            if report and self.answer is not None:
                print(answer_line(self.answer, self.as_json), flush=True)
        self.fig.canvas.draw_idle()

    def _predict(self) -> None:
        self.predicted_at = time.perf_counter()
        try:
            seen = None if self.drawing.blank() or self.drawing.too_small() else model_view(self.drawing)
        except UserError:  # no digit digit_to_mnist can find
            seen = None
        if seen is None:
            self.answer = None  # nothing to answer, or to save, until there is a digit
            self.seen_image.set_data(torch.zeros(32, 32).numpy())
            for bar in self.bars:
                bar.set_height(0)
            self.verdict.set_text("" if self.drawing.blank() else "?")
            self.confidence.set_text("" if self.drawing.blank() else "too small to read")
            return
        probabilities = self.classify(seen[None])[0]
        self.answer = {**prediction_records(probabilities[None], self.members)[0], "strokes": len(self.drawing.strokes)}
        self.seen_image.set_data(seen[0].numpy())
        for bar, p in zip(self.bars, probabilities.tolist()):
            bar.set_height(p)
            bar.set_color("tab:orange" if bar is self.bars[self.answer["prediction"]] else "tab:blue")
        self.verdict.set_text(str(self.answer["prediction"]))
        self.confidence.set_text(f"{100 * self.answer['confidence']:.0f}% sure")

    def _save(self) -> None:
        """The drawing as a PNG named after its predicted digit, which predict.py --images reads back."""
        if self.answer is None:  # nothing drawn, or nothing readable yet
            print("note: nothing to save yet: draw a digit first", file=sys.stderr, flush=True)
            return
        from PIL import Image

        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        path = self.save_dir / f"{self.answer['prediction']}_{stamp}.png"
        pixels = (self.drawing.image() * 255).round().to(torch.uint8).numpy()
        try:
            with atomic_write(path) as tmp:
                Image.fromarray(pixels, mode="L").save(tmp, format="PNG")
        except UserError as error:  # the window stays open: the drawing is not lost
            print(f"error: {error}", file=sys.stderr, flush=True)
            return
        print(f"saved {path}", file=sys.stderr, flush=True)
