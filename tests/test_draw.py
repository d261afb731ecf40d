"""predict.py --draw: a real window on a virtual X server, drawn on with the real mouse through xdotool.

Xvfb and xdotool come from Debian's packages (.ci/run installs them where it can); without them, or without Tk,
the window tests skip and say why. The pad's accuracy is measured without a window, through the code path the mouse
uses.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time

import pytest
import torch
from helpers import ROOT, run_script

import data
from lib.checkpoints import load_model
from lib.device import choose_precision
from lib.drawpad import PAD_BOX, PAD_PIXELS, Drawing, model_view
from lib.inference import fold_batchnorm, probabilities

AUTO = choose_precision(torch.device("cpu")).name  # the precision the scripts pick on this CPU


@pytest.fixture(scope="module")
def display():
    """A virtual X server of our own, its number free of any other."""
    missing = [tool for tool in ("Xvfb", "xdotool") if not shutil.which(tool)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (Debian: apt-get install xvfb xdotool)")
    pytest.importorskip("tkinter", reason="this Python has no Tk, which matplotlib's window needs here")
    number = next(n for n in range(90, 200) if not os.path.exists(f"/tmp/.X11-unix/X{n}"))
    server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    name = f":{number}"
    for _ in range(100):  # ready once a client can ask it something
        if subprocess.run(["xdotool", "getdisplaygeometry"], env={**os.environ, "DISPLAY": name},
                          capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    yield name
    server.terminate()
    server.wait()


class Pad:
    """predict.py --draw --json in a window on `display`, driven by xdotool; each printed line is read as JSON."""

    def __init__(self, display: str, weights, save_dir):
        self.env = {**os.environ, "DISPLAY": display, "MPLBACKEND": "TkAgg"}
        self.process = subprocess.Popen([sys.executable, str(ROOT / "predict.py"), "--draw", "--json", "--weights",
                                         str(weights), "--save-dir", str(save_dir)], cwd=ROOT, env=self.env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.process.stdout], daemon=True).start()
        found = self.xdotool("search", "--sync", "--name", "predict.py --draw", timeout=60).split()
        self.window = found[0]
        geometry = dict(line.split("=") for line in self.xdotool("getwindowgeometry", "--shell", self.window).split())
        self.x, self.y, width, height = (int(geometry[k]) for k in ("X", "Y", "WIDTH", "HEIGHT"))
        left, bottom, box_width, box_height = PAD_BOX
        self.left, self.top = self.x + left * width, self.y + (1 - bottom - box_height) * height
        self.scale = box_width * width / PAD_PIXELS  # screen pixels per pad pixel
        time.sleep(1)  # the first draw of the window

    def xdotool(self, *args: str, timeout: float = 10) -> str:
        return subprocess.run(["xdotool", *args], env=self.env, capture_output=True, text=True, check=True,
                              timeout=timeout).stdout

    def stroke(self, points: list[tuple[float, float]]) -> None:
        """Press, drag through `points` (pad pixels), release: the real mouse, as a user would."""
        screen = [(round(self.left + x * self.scale), round(self.top + y * self.scale)) for x, y in points]
        self.xdotool("mousemove", *map(str, screen[0]), "mousedown", "1")
        for x, y in screen[1:]:  # at a hand's pace: 20 points a second
            self.xdotool("mousemove", str(x), str(y), "sleep", "0.05")
        self.xdotool("mouseup", "1")

    def key(self, name: str) -> None:
        """A key press where a user's goes: to the window under the pointer (Xvfb runs no window manager)."""
        self.xdotool("mousemove", str(self.x + 5), str(self.y + 5), "key", name)

    def answer(self, timeout: float = 20) -> dict:
        return json.loads(self.lines.get(timeout=timeout))

    def quiet(self, seconds: float = 1.5) -> bool:
        """Whether nothing more is printed for a while."""
        try:
            self.lines.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def vertical(x: float = 140) -> list[tuple[float, float]]:
    return [(x, y) for y in range(50, 241, 19)]


def loop() -> list[tuple[float, float]]:
    angles = torch.linspace(0, 2 * torch.pi, 25)
    return [(140 + 75 * float(torch.sin(a)), 140 - 95 * float(torch.cos(a))) for a in angles]


def horizontal() -> list[tuple[float, float]]:
    return [(x, 60) for x in range(60, 231, 17)]


@pytest.fixture
def pad(display, trained, tmp_path):
    opened = Pad(display, trained / "best.pt", tmp_path / "drawings")
    yield opened
    opened.close()


def test_a_stroke_a_loop_clear_undo_save_and_quit_in_a_real_window(pad, trained, tmp_path, mnist_dir):
    pad.stroke(vertical())
    one = pad.answer()
    assert one["prediction"] == 1 and one["strokes"] == 1, one
    assert set(one) == {"prediction", "confidence", "top3", "strokes"}

    pad.stroke(horizontal())  # a second stroke changes the drawing; u takes it back
    assert pad.answer()["strokes"] == 2
    pad.key("u")
    undone = pad.answer()
    assert undone["strokes"] == 1 and [t["digit"] for t in undone["top3"]] == [t["digit"] for t in one["top3"]]
    assert [t["probability"] for t in undone["top3"]] == pytest.approx([t["probability"] for t in one["top3"]])

    pad.key("c")  # a blank pad prints nothing; the next stroke starts afresh
    assert pad.quiet()
    pad.stroke(loop())
    zero = pad.answer()
    assert zero["prediction"] == 0 and zero["strokes"] == 1, zero

    pad.key("s")  # saved as a PNG named after its digit, which --images reads as the window did
    saved = sorted((tmp_path / "drawings").glob("*.png")) if _wait_for(tmp_path / "drawings") else []
    assert len(saved) == 1 and saved[0].name.startswith("0_"), saved
    again = run_script("predict.py", "--images", str(saved[0]), "--json", "--weights", str(trained / "best.pt"),
                       "--out", str(tmp_path / "read_back.png"))
    record = json.loads(again.stdout)[0]
    assert record["prediction"] == 0 and record["confidence"] == pytest.approx(zero["confidence"], abs=0.02)

    pad.key("q")
    assert pad.process.wait(timeout=20) == 0
    assert "Traceback" not in pad.process.stderr.read()


def _wait_for(folder, seconds: float = 10) -> bool:
    for _ in range(int(seconds * 10)):
        if folder.is_dir() and any(folder.glob("*.png")):
            return True
        time.sleep(0.1)
    return False


def test_without_a_display_draw_says_a_window_is_needed(trained):
    env = {key: value for key, value in os.environ.items() if key not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--draw", "--weights", str(trained / "best.pt")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == ("error: --draw needs a window, and there is no display here ($DISPLAY is not set); to "
                             "classify image files, use --images\n")


def test_draw_with_images_or_errors_is_refused(slow):
    for other in (["--images", "x.png"], ["--errors"]):
        result = run_script("predict.py", "--draw", *other)
        assert result.returncode == 2 and result.stderr.startswith("error: argument --"), result.stderr
        assert "not allowed with argument" in result.stderr and "Traceback" not in result.stderr


def skeleton(digit: torch.Tensor) -> torch.Tensor:
    """Zhang and Suen's thinning of a binary image [H, W]: the ink's centre lines, one pixel wide."""
    x = torch.nn.functional.pad((digit > 0.5).float(), (1, 1, 1, 1))
    while True:
        changed = False
        for first in (True, False):
            p = [x.roll(shifts, (0, 1)) for shifts in ((1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1),
                                                        (1, 1))]  # P2..P9, clockwise from north
            neighbours = sum(p)
            transitions = sum(((p[i] == 0) & (p[(i + 1) % 8] == 1)).float() for i in range(8))
            if first:
                gone = (p[0] * p[2] * p[4] == 0) & (p[2] * p[4] * p[6] == 0)
            else:
                gone = (p[0] * p[2] * p[6] == 0) & (p[0] * p[4] * p[6] == 0)
            remove = (x == 1) & (neighbours >= 2) & (neighbours <= 6) & (transitions == 1) & gone
            if remove.any():
                x[remove] = 0
                changed = True
        if not changed:
            return x[1:-1, 1:-1]


def draw_along_skeleton(digit: torch.Tensor) -> Drawing:
    """The digit drawn with the pad's pen along its skeleton, at the pad's scale, as a hand would trace it."""
    drawing = Drawing()
    scale = PAD_PIXELS / digit.shape[0]
    lines = skeleton(digit)
    ys, xs = lines.nonzero(as_tuple=True)
    ink = set(zip(ys.tolist(), xs.tolist()))
    for y, x in sorted(ink):
        drawing.start((x + 0.5) * scale, (y + 0.5) * scale)
        for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):  # each neighbour once
            if (y + dy, x + dx) in ink:
                drawing.extend((x + dx + 0.5) * scale, (y + dy + 0.5) * scale)
                drawing.start((x + 0.5) * scale, (y + 0.5) * scale)
    return drawing


def test_digits_drawn_with_the_pen_read_as_well_as_the_originals(trained, mnist_dir):
    model, _ = load_model(trained / "best.pt", torch.device("cpu"))
    folded = fold_batchnorm(model)
    raw, labels = data.load_split(mnist_dir, train=False)
    raw, labels = raw[:200], labels[:200]
    on_originals = (probabilities(folded, data.to_model_size(raw), AUTO).argmax(1) == labels).float().mean()
    drawn = torch.stack([model_view(draw_along_skeleton(digit.float() / 255)) for digit in raw])
    on_drawings = (probabilities(folded, drawn, AUTO).argmax(1) == labels).float().mean()
    print(f"\n{len(labels)} MNIST test digits: {100 * on_originals:.1f}% as they are, {100 * on_drawings:.1f}% drawn "
          "along their skeletons with the pad's pen")
    assert on_drawings >= on_originals - 0.02


# ---- Every key and click in every state: the window's handlers driven by matplotlib events, on the Agg backend

STATES = ["fresh", "dot", "digit", "undone", "mid-stroke", "mid-stroke-outside"]
EVENTS = ["left-press", "left-press-outside", "right-press", "middle-press", "move", "move-outside", "release",
          "c", "u", "s", "s-again", "q", "escape", "other-key", "close"]


def agg_pad(tmp_path, monkeypatch):
    from matplotlib import pyplot as plt

    from lib import drawpad

    plt.switch_backend("agg")
    monkeypatch.setattr(drawpad, "pyplot", lambda interactive=False: plt)
    pad = drawpad.DrawPad(lambda images: torch.full((len(images), 10), 0.1), tmp_path / "saved", as_json=True)
    pad.fig.canvas.draw_idle = lambda: None  # the handlers are under test: whole redraws only where the test asks
    return pad


def send(pad, what: str, x: float = 140, y: float = 140) -> None:
    """One user action, as the toolkit would deliver it; (x, y) in pad pixels."""
    from matplotlib.backend_bases import KeyEvent, MouseEvent

    canvas = pad.fig.canvas
    inside = pad.ax_pad.transData.transform((x, y))
    outside = pad.fig.transFigure.transform((0.99, 0.99))
    mouse = {"left-press": ("button_press_event", inside, 1), "left-press-outside": ("button_press_event", outside, 1),
             "right-press": ("button_press_event", inside, 3), "middle-press": ("button_press_event", inside, 2),
             "move": ("motion_notify_event", inside, None), "move-outside": ("motion_notify_event", outside, None),
             "release": ("button_release_event", inside, 1)}
    if what in mouse:
        name, (px, py), button = mouse[what]
        MouseEvent(name, canvas, px, py, button)._process()
    elif what == "close":
        pad.plt.close(pad.fig)
    else:
        key = {"s-again": "s", "other-key": "x"}.get(what, what)
        KeyEvent("key_press_event", canvas, key)._process()


def bring_to(pad, state: str) -> None:
    if state in ("dot", "digit", "undone", "mid-stroke", "mid-stroke-outside"):
        send(pad, "left-press", 140, 60)
        if state != "dot":
            for y in (150, 240):
                send(pad, "move", 140, y)
        if not state.startswith("mid-stroke"):
            send(pad, "release", 140, 240 if state != "dot" else 60)
        if state == "undone":
            send(pad, "u")
        if state == "mid-stroke-outside":
            send(pad, "move-outside")


@pytest.mark.parametrize("state", STATES)
def test_every_key_and_click_in_every_state_of_the_pad_leaves_it_working(state, tmp_path, monkeypatch, capsys):
    for event in EVENTS:
        pad = agg_pad(tmp_path, monkeypatch)
        bring_to(pad, state)
        send(pad, event)
        if event not in ("q", "escape", "close"):  # the pen moves on and lifts, and the drawing is saved (or a note)
            for after in ("move", "release", "s"):
                send(pad, after, 150, 200)
        # With the pen up, the answer is the drawing's: none for a blank pad or a dot, else the digit read.
        readable = not (pad.drawing.blank() or pad.drawing.too_small())
        assert pad.pen_down or (pad.answer is not None) == readable, (state, event)
        if event == "other-key":
            pad.fig.canvas.draw()  # and the window draws what the handlers left
        pad.plt.close("all")
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Error" not in captured.err, captured.err


def test_a_dot_too_small_to_read_gets_no_answer_and_is_not_saved(tmp_path, monkeypatch, capsys):
    pad = agg_pad(tmp_path, monkeypatch)
    bring_to(pad, "dot")
    assert pad.answer is None and pad.verdict.get_text() == "?" and pad.confidence.get_text() == "too small to read"
    send(pad, "s")
    assert not (tmp_path / "saved").exists()
    assert capsys.readouterr().err == "note: nothing to save yet: draw a digit first\n"
    bring_to(pad, "digit")  # the dot and a stroke: a digit, saved twice as two files
    send(pad, "s")
    send(pad, "s")
    assert pad.answer is not None and len(list((tmp_path / "saved").glob("*.png"))) == 2
