"""Ensembles: several checkpoints evaluated and predicted as one model, the mean of their probabilities."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import QUICK_RECIPE, TEST_IMAGES, run_script

import data
from lib.checkpoints import load_checkpoint, load_model
from lib.device import choose_precision
from lib.inference import Ensemble, evaluate_split, load_models, probabilities, score

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def second_seed(tmp_path_factory, mnist_dir):
    """The tests' quick recipe again for one epoch of half its images, with another seed: a second member, weaker,
    that predicts differently."""
    out = tmp_path_factory.mktemp("seed1")
    result = run_script("train.py", *QUICK_RECIPE, "--epochs", "1", "--subset", "1000", "--val-size", "250", "--seed",
                        "1", "--out-dir", str(out), "--data-dir", str(mnist_dir))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def test_images(mnist_dir):
    images, labels = data.load_test(mnist_dir, CPU)
    return images[:500], labels[:500]


def test_the_ensembles_probabilities_are_the_mean_of_its_members(trained, second_seed, test_images):
    ensemble, checkpoints = load_models([trained / "best.pt", second_seed / "best.pt"], CPU)
    assert isinstance(ensemble, Ensemble) and [c["args"]["seed"] for c in checkpoints] == [0, 1]
    images, _ = test_images
    first, second = (probabilities(member, images, precision="fp32") for member in ensemble.members)
    assert (first.argmax(1) != second.argmax(1)).any(), "two seeds that always agree would test nothing"
    together = probabilities(ensemble, images, precision="fp32")
    assert torch.allclose(together, (first + second) / 2, atol=1e-5)


def test_scoring_the_members_logits_is_evaluating_the_ensemble(trained, second_seed, test_images):
    """test.py runs each member once and scores the ensemble from their logits: the same result as evaluate() on it."""
    ensemble, _ = load_models([trained / "best.pt", second_seed / "best.pt"], CPU)
    images, labels = test_images
    auto = choose_precision(CPU).name  # as test.py runs by default: bf16 autocast where the CPU has it
    whole = evaluate_split(ensemble, images, labels, precision=auto, desc="test")
    members = [evaluate_split(member, images, labels, precision=auto, desc="test")["logits"]
               for member in ensemble.members]
    combined = score(Ensemble.combine(members), labels)
    assert torch.equal(whole["logits"].argmax(1), combined["logits"].argmax(1))
    assert torch.allclose(whole["logits"], combined["logits"], atol=1e-5)
    assert combined["accuracy"] == whole["accuracy"] and combined["loss"] == pytest.approx(whole["loss"], abs=1e-6)


def test_an_ensemble_of_one_is_the_single_model(trained, test_images):
    model, _ = load_model(trained / "best.pt", CPU)
    images, labels = test_images
    alone = evaluate_split(model, images, labels, precision="fp32", desc="test")
    as_ensemble = evaluate_split(Ensemble([model]).eval(), images, labels, precision="fp32", desc="test")
    assert torch.equal(alone["logits"].argmax(1), as_ensemble["logits"].argmax(1))
    assert alone["accuracy"] == as_ensemble["accuracy"]
    assert torch.allclose(alone["logits"].softmax(1), as_ensemble["logits"].softmax(1), atol=1e-5)


def test_test_py_prints_each_member_and_the_ensemble_and_writes_its_own_report(trained, second_seed, mnist_dir):
    """int8 and the robustness report as well: each works on an ensemble."""
    members = [str(trained / "best.pt"), str(second_seed / "best.pt")]
    shared = trained.parent  # pytest's base folder, which both members' folders are in
    before = sorted(p.name for p in trained.iterdir())
    result = run_script("test.py", "--weights", *members, "--int8", "--robustness", "--robustness-images", "20",
                        "--device", "cpu", "--data-dir", str(mnist_dir))
    assert result.returncode == 0, result.stderr
    report = json.loads((shared / "ensemble_test_report.json").read_text())
    assert report["weights"] == members and [m["weights"] for m in report["members"]] == members
    assert report["precision"] == "int8" and "(int8)" in result.stdout
    assert (shared / "ensemble_confusion_matrix.png").is_file()
    robustness = json.loads((shared / "ensemble_robustness.json").read_text())
    assert robustness["images"] == 20 and robustness["clean"] > 0.5 and (shared / "ensemble_robustness.png").is_file()
    assert sorted(p.name for p in trained.iterdir()) == before  # no member's own files written or replaced
    for member in report["members"]:  # the table: each member's accuracy and loss
        assert f"{100 * member['accuracy']:7.2f}%  {member['loss']:9.4f}" in result.stdout
    assert "weights: an ensemble of 2 models, the mean of their probabilities" in result.stdout
    assert f"test accuracy: {100 * report['accuracy']:.2f}% (" in result.stdout
    assert report["count"] == TEST_IMAGES and sum(map(sum, report["confusion_matrix"])) == TEST_IMAGES


def test_a_member_of_another_architecture_is_refused_in_one_line_naming_it(trained, second_seed, tmp_path):
    foreign = load_checkpoint(trained / "best.pt")
    foreign["arch"] = "resnet34-mnist"
    torch.save(foreign, tmp_path / "other.pt")
    result = run_script("test.py", "--weights", str(trained / "best.pt"), str(second_seed / "best.pt"),
                        str(tmp_path / "other.pt"), "--device", "cpu")
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path / 'other.pt'} has arch 'resnet34-mnist', expected 'resnet18-mnist'\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.pt"]


def test_predict_py_json_says_how_many_members_voted(trained, second_seed, tmp_path, mnist_dir):
    members = [str(trained / "best.pt"), str(second_seed / "best.pt")]
    common = ["--num", "4", "--json", "--device", "cpu", "--data-dir", str(mnist_dir)]
    together = run_script("predict.py", "--weights", *members, *common, "--out", str(tmp_path / "e.png"))
    alone = run_script("predict.py", "--weights", members[0], *common, "--out", str(tmp_path / "a.png"))
    assert together.returncode == 0 and alone.returncode == 0, together.stderr + alone.stderr
    assert [record["members"] for record in json.loads(together.stdout)] == [2, 2, 2, 2]
    assert all("members" not in record for record in json.loads(alone.stdout))
    assert (tmp_path / "e.png").is_file()


def test_confident_members_combine_to_finite_log_probabilities():
    # Probabilities of e**-200 underflow to 0 in float32: the log of their mean was -inf, and so the loss of a digit
    # every member missed. The ensemble's output is the log of the mean probability, computed without underflow.
    logits = [torch.tensor([[200.0, 0.0, 0.0]]), torch.tensor([[0.0, 200.0, 0.0]])]
    combined = Ensemble.combine(logits)
    assert torch.isfinite(combined).all()
    assert combined[0, 2].item() == pytest.approx(-200.0, abs=1e-3)  # log((e**-200 + e**-200) / 2)
    assert torch.allclose(combined[:, :2], torch.full((1, 2), math.log(0.5)), atol=1e-6)
    moderate = [torch.randn(5, 10), torch.randn(5, 10)]  # where nothing underflows: the plain mean, as before
    plain = torch.stack([m.softmax(1) for m in moderate]).mean(0).log()
    assert torch.allclose(Ensemble.combine(moderate), plain, atol=1e-6)
