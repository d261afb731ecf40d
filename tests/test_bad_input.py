"""Every mistake a user can make gets one clear line on stderr, exit code 2, and nothing written."""

from __future__ import annotations

import hashlib
import importlib
import re
from pathlib import Path

import pytest
import torch
from helpers import run_script

from lib.checkpoints import save_checkpoint
from lib.common import UserError
from model import ResNet18

RAW_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def snapshot(folder) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def broken_data_dir(root, mnist_dir, broken: str, how: str):
    """A copy of MNIST (as symlinks) with one file missing, truncated or of the wrong kind."""
    raw = root / how / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in RAW_FILES:
        if name != broken:
            (raw / name).symlink_to(mnist_dir / "MNIST" / "raw" / name)
    original = (mnist_dir / "MNIST" / "raw" / broken).read_bytes()
    if how == "truncated":
        (raw / broken).write_bytes(original[:5000])
    elif how == "wrong-magic":
        (raw / broken).write_bytes((2049).to_bytes(4, "big") + original[4:])
    return root / how


CASES = [  # (id, script, arguments with {w}=good weights {t}=tmp {d}=data dir, part of the expected message)
    ("missing-weights", "test.py", ["--weights", "{t}/nope.pt"], "no checkpoint at"),
    (
        "folder-as-weights",
        "test.py",
        ["--weights", "{t}/earlier"],
        "earlier is a folder; name the checkpoint in it, e.g. ",
    ),
    ("empty-checkpoint", "test.py", ["--weights", "{t}/empty.pt"], "not a readable checkpoint"),
    ("truncated-checkpoint", "test.py", ["--weights", "{t}/truncated.pt"], "not a readable checkpoint"),
    (
        "text-file-as-checkpoint",
        "predict.py",
        ["--weights", "{t}/notes.txt", "--out", "{t}/p.png"],
        "not a readable checkpoint",
    ),
    ("plain-state-dict", "test.py", ["--weights", "{t}/state_dict.pt"], "not a checkpoint written by this project"),
    (
        "missing-idx-file",
        "test.py",
        ["--weights", "{w}", "--data-dir", "{t}/missing"],
        "t10k-labels-idx1-ubyte is missing",
    ),
    (
        "truncated-idx-file",
        "test.py",
        ["--weights", "{w}", "--data-dir", "{t}/truncated"],
        "t10k-images-idx3-ubyte is truncated",
    ),
    (
        "wrong-magic-idx-file",
        "train.py",
        ["--data-dir", "{t}/wrong-magic"],
        "train-images-idx3-ubyte is not an MNIST images IDX file",
    ),
    ("zero-epochs", "train.py", ["--epochs", "0"], "--epochs: must be a positive integer"),
    ("negative-epochs", "train.py", ["--epochs", "-3"], "--epochs: must be a positive integer"),
    ("zero-batch-size", "train.py", ["--batch-size", "0"], "--batch-size: must be a positive integer"),
    ("text-batch-size", "train.py", ["--batch-size", "big"], "--batch-size: invalid positive_int value"),
    ("zero-subset", "train.py", ["--subset", "0"], "--subset: must be a positive integer"),
    ("subset-too-large", "train.py", ["--subset", "58000"], "--subset must be between 1 and 55000"),
    ("val-size-too-large", "train.py", ["--val-size", "60000"], "--val-size must be between 0 and 59999"),
    ("negative-lr", "train.py", ["--lr", "-0.1"], "--lr: must be a positive number"),
    ("unknown-device", "train.py", ["--device", "tpu"], "unknown device 'tpu'"),
    ("cuda-without-gpu", "test.py", ["--weights", "{w}", "--device", "cuda"], "no CUDA GPU is available"),
    ("resume-without-checkpoint", "train.py", ["--resume"], "no checkpoint at"),
    (
        "resume-and-overwrite",
        "train.py",
        ["--resume", "--overwrite"],
        "argument --overwrite: not allowed with argument --resume",
    ),
    (
        "train-over-an-earlier-run",
        "train.py",
        ["--out-dir", "{t}/earlier"],
        "earlier already holds best.pt and last.pt of an earlier run: continue",
    ),
    ("unknown-flag", "test.py", ["--epochs", "3"], "unrecognized arguments: --epochs 3"),
    (
        "predict-into-missing-folder",
        "predict.py",
        ["--weights", "{w}", "--out", "{t}/no/such/dir/p.png"],
        "does not exist",
    ),
    ("train-into-a-file", "train.py", ["--out-dir", "{t}/notes.txt/run"], "notes.txt is a file, not a folder"),
    (
        "test-report-into-a-file",
        "test.py",
        ["--weights", "{w}", "--out-dir", "{t}/notes.txt"],
        "notes.txt is a file, not a folder",
    ),
    (
        "seeds-into-a-file",
        "benchmarks/seeds.py",
        ["--out-dir", "{t}/notes.txt/runs"],
        "notes.txt is a file, not a folder",
    ),
    (
        "predict-figure-of-unknown-format",
        "predict.py",
        ["--weights", "{w}", "--out", "{t}/p.txt"],
        "p.txt: end the name with an extension matplotlib can write (avif, eps, gif, jpeg, jpg, pdf,",
    ),
    (
        "predict-zero-images",
        "predict.py",
        ["--weights", "{w}", "--num", "0", "--out", "{t}/p.png"],
        "--num: must be a positive integer",
    ),
    (
        "predict-errors-of-own-images",
        "predict.py",
        ["--weights", "{w}", "--errors", "--images", "{t}/notes.txt", "--out", "{t}/p.png"],
        "--images: not allowed with argument --errors",
    ),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, mnist_dir):
    folder = tmp_path_factory.mktemp("bad_input")
    save_checkpoint(folder / "good.pt", ResNet18(), epoch=1)
    for name in ("best.pt", "last.pt"):  # a finished run that a new one must not replace unasked
        save_checkpoint(folder / "earlier" / name, ResNet18(), epoch=1)
    (folder / "empty.pt").write_bytes(b"")
    (folder / "truncated.pt").write_bytes((folder / "good.pt").read_bytes()[:100_000])
    (folder / "notes.txt").write_text("not a checkpoint\n")
    torch.save(ResNet18().state_dict(), folder / "state_dict.pt")
    broken_data_dir(folder, mnist_dir, "t10k-labels-idx1-ubyte", "missing")
    broken_data_dir(folder, mnist_dir, "t10k-images-idx3-ubyte", "truncated")
    broken_data_dir(folder, mnist_dir, "train-images-idx3-ubyte", "wrong-magic")
    return folder


@pytest.mark.parametrize("script, arguments, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_exit_2_and_writes_nothing(slow, workspace, mnist_dir, script, arguments, expected):
    if "cuda" in arguments and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    arguments = [a.format(w=workspace / "good.pt", t=workspace, d=mnist_dir) for a in arguments]
    if script == "train.py" and "--out-dir" not in arguments:
        arguments += ["--out-dir", str(workspace / "out")]
    before = snapshot(workspace)
    result = run_script(script, *arguments, env={"MNIST_DATA_DIR": str(mnist_dir)})
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert snapshot(workspace) == before


def test_resuming_with_another_recipe_is_refused_not_ignored(trained, mnist_dir):
    # --resume takes the recipe from last.pt (its one-cycle schedule is fixed at the start), so an --epochs on the
    # command line could never take effect: said at once, and the finished run is left as it was.
    before = snapshot(trained)
    result = run_script(
        "train.py",
        "--resume",
        "--epochs",
        "5",
        "--batch-size",
        "64",
        "--no-augment",
        "--out-dir",
        str(trained),
        env={"MNIST_DATA_DIR": str(mnist_dir)},
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr == (
        f"error: {trained / 'last.pt'} resumes with the settings it was saved with, not --epochs 5 --no-augment "
        "(saved: epochs=2, augment=True): leave those out, or start a new run (another --out-dir, or --overwrite)\n"
    )
    assert snapshot(trained) == before


def test_weights_in_a_folder_it_cannot_write_are_tested_only_with_another_out_dir(workspace, monkeypatch):
    # test.py writes its report beside the weights unless told otherwise: where it may not write (weights shared
    # read-only), it says so before evaluating. CI runs as root, who may write anywhere, so access is denied here
    # through os.access, which the check asks.
    import data
    import test
    from lib import files
    from lib.common import UserError

    read_only = workspace.resolve()
    monkeypatch.setattr(files.os, "access", lambda path, mode: Path(path).resolve() != read_only)
    monkeypatch.setattr(
        data, "load_test", lambda *args: pytest.fail("evaluated before the report's folder was checked")
    )
    with pytest.raises(UserError) as refused:
        test.main(["--weights", str(workspace / "good.pt"), "--device", "cpu"])
    assert str(refused.value) == (
        f"{workspace} (the folder of --weights, where the report goes without --out-dir): "
        f"cannot write in {read_only} (no permission, or a read-only file system)"
    )


def test_int8_off_the_cpu_is_refused_with_what_to_do():
    # Called directly: no GPU here to run `test.py --int8 --device cuda` on, and the check comes before any work.
    from lib.common import UserError
    from lib.inference import int8_model

    with pytest.raises(UserError, match=r"--int8 runs on the CPU only .* not cuda: add --device cpu"):
        int8_model(ResNet18(), None, 1000, torch.device("cuda"))


@pytest.mark.parametrize(
    "script, arguments, expected",
    [
        ("train", ["--warmup", "1"], "--warmup: must be from 0 to below 1, got 1"),
        ("train", ["--label-smoothing", "1.5"], "--label-smoothing: must be from 0 to 1, got 1.5"),
        ("train", ["--momentum", "-0.9"], "--momentum: must be from 0 to below 1, got -0.9"),
        ("train", ["--weight-decay", "nan"], "--weight-decay: must be 0 or more, got nan"),
        ("train", ["--weight-decay", "lots"], "--weight-decay: invalid float value: 'lots'"),
        ("train", ["--seed", "99999999999999999999"], "--seed: must be from 0 to 4294967295, got 99999999999999999999"),
        ("test", ["--seed", "-1"], "--seed: must be from 0 to 4294967295, got -1"),
        ("predict", ["--seed", "4294967296"], "--seed: must be from 0 to 4294967295, got 4294967296"),
    ],
)
def test_numbers_out_of_range_are_refused_as_the_command_line_is_read(script, arguments, expected):
    # In-process: the one line and exit code 2 of such a refusal are checked end to end above (e.g. negative-lr);
    # without these checks each of them was a traceback from torch (an optimizer, scheduler, loss or generator).
    from lib.common import UserError

    with pytest.raises(UserError, match=re.escape(expected)):
        importlib.import_module(script).parse_args(arguments)


def test_compile_on_a_cpu_without_its_compiler_is_refused_before_any_work(slow, mnist_dir, tmp_path):
    # inductor builds CPU kernels with $CXX (else g++): without it the first step would die in a compiler traceback.
    result = run_script(
        "train.py",
        "--compile",
        "--device",
        "cpu",
        "--out-dir",
        str(tmp_path / "out"),
        "--data-dir",
        str(mnist_dir),
        env={"CXX": "no-such-compiler"},
    )
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr
        == "error: --compile on a CPU needs the C++ compiler no-such-compiler (set CXX to use another), "
        "and it was not found\n"
    )
    assert not (tmp_path / "out").exists()


# A valid value other than the default, for every setting a resumed run takes from last.pt. A setting added to
# train.py without a row here fails the completeness test below, so that --resume is checked for it too.
OTHER_VALUES = {"epochs": 3, "batch_size": 64, "lr": 0.05, "momentum": 0.8, "weight_decay": 0.001, "warmup": 0.1,
                "label_smoothing": 0.0, "augment": False, "photometric": True, "seed": 7, "val_size": 1000,
                "subset": 500, "test_each_epoch": True, "channels_last": False, "deterministic": True,
                "sync_bn": True, "eval_batch_size": 500}


def test_every_setting_resume_takes_from_last_pt_is_checked():
    import train

    settings = set(vars(train.parse_args([]))) - train.RUNTIME_FLAGS - {"overwrite"}  # --overwrite excludes --resume
    assert settings == set(OTHER_VALUES)


def resume_with(argv: list[str], saved: dict):
    """train.py's handling of `--resume` plus argv, for a last.pt saved with `saved` over the defaults."""
    import train

    args = train.parse_args(["--resume", *argv])
    train.adopt_saved_recipe(args, {**vars(train.parse_args([])), **saved}, Path("run/last.pt"),
                             train.flags_given(["--resume", *argv]))
    return args


@pytest.mark.parametrize("name", sorted(OTHER_VALUES))
def test_a_recipe_flag_on_resume_is_refused_whatever_its_value_unless_it_agrees_with_last_pt(name):
    import train

    default, other = vars(train.parse_args([]))[name], OTHER_VALUES[name]
    words = train.flag_words(name, other)
    # Saved at the default, asked for another value: refused, naming the flag and the saved value.
    refusal = rf"resumes with the settings it was saved with, not {re.escape(' '.join(words))} \(saved: {name}="
    with pytest.raises(UserError, match=refusal + re.escape(str(default))):
        resume_with(words, {})
    # Saved with another value and asked for the same: the run goes on with it.
    assert getattr(resume_with(words, {name: other}), name) == other
    if default is not None and not isinstance(default, bool):  # a switch cannot be typed out at its default
        # Saved with another value, asked for the default by typing it out: refused too, not silently ignored.
        with pytest.raises(UserError, match=rf"not {re.escape(' '.join(train.flag_words(name, default)))} \(saved"):
            resume_with(train.flag_words(name, default), {name: other})
    # Not asked for: the saved value, whatever the default.
    assert getattr(resume_with([], {name: other}), name) == other


def test_flags_of_where_and_how_to_run_on_resume_are_honoured():
    args = resume_with(["--device", "cpu", "--precision", "fp32", "--compile", "--no-cuda-graphs", "--data-dir", "d"],
                       {"device": "cuda", "precision": "bf16", "compile": False, "cuda_graphs": True, "data_dir": None})
    assert (args.device, args.precision, args.compile, args.cuda_graphs, args.data_dir) == ("cpu", "fp32", True, False,
                                                                                            "d")
