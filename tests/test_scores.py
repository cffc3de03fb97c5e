"""DD-Ranking scores: each formula on hand-computed cases, the measurement (lr chosen on validation, never the test
split; random draws outside the validation split; every number saved), and ``gendistill eval --scores``."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import cli

import gendistill.scores as scores_mod
from gendistill.cli import main
from gendistill.data import get_dataset
from gendistill.evaluate import EvalConfig
from gendistill.scores import (
    ScoreConfig,
    augmentation_robust_score,
    dd_scores,
    exp_normalise,
    full_data_accuracy,
    hard_label_recovery,
    improvement_over_random,
    label_robust_score,
    validation_split,
)
from gendistill.teacher import NetTraining, train_teacher

CFG = EvalConfig(arch="mlp", epochs=2, batch=64)


# ----------------------------------------------------------------------------------------------- formulas


def test_exp_normalise_ends_and_middle():
    assert exp_normalise(-1) == pytest.approx(0.0, abs=1e-12)
    assert exp_normalise(1) == pytest.approx(1.0)
    assert exp_normalise(0) == pytest.approx(1 / (1 + math.e))  # (1 - 1/e) / (e - 1/e) = 1 / (1 + e) = 0.268941


def test_hlr_and_ior_by_hand():
    assert hard_label_recovery(0.90, 0.80) == pytest.approx(0.10)
    assert hard_label_recovery(0.80, 0.85) == pytest.approx(-0.05)  # a set can beat the full data
    assert improvement_over_random(0.80, 0.70) == pytest.approx(0.10)
    assert improvement_over_random(0.60, 0.70) == pytest.approx(-0.10)


def test_lrs_by_hand():
    # w = 0.5: a = 0.5 * IOR - 0.5 * HLR
    assert label_robust_score(0.10, 0.10) == pytest.approx(0.268941, abs=1e-6)  # a = 0
    assert label_robust_score(0.20, 0.30) == pytest.approx(0.290755, abs=1e-6)  # a = 0.05: (e^0.05 - e^-1) / (e - e^-1)
    assert label_robust_score(-1.0, 1.0) == pytest.approx(1.0)  # the best possible: a = 1
    assert label_robust_score(1.0, -1.0) == pytest.approx(0.0, abs=1e-12)
    assert label_robust_score(0.2, 0.0, w=1.0) == pytest.approx(0.268941, abs=1e-6)  # w = 1 ignores HLR
    with pytest.raises(ValueError, match="weight w"):
        label_robust_score(0.1, 0.1, w=1.5)


def test_ars_by_hand():
    # g = 0.5: b = 0.5 * (0.8 - 0.7) + 0.5 * (0.6 - 0.4) = 0.15 -> (e^0.15 - e^-1) / (e - e^-1) = 0.337795
    assert augmentation_robust_score(0.8, 0.7, 0.6, 0.4) == pytest.approx(0.337795, abs=1e-6)
    # g = 1 reads only the augmented pair: b = -0.1 -> 0.228454
    assert augmentation_robust_score(0.6, 0.7, 0.9, 0.1, gamma=1.0) == pytest.approx(0.228454, abs=1e-6)


def test_scores_refuse_percentages():
    with pytest.raises(ValueError, match="fractions, not percentages"):
        hard_label_recovery(91.0, 80.0)
    with pytest.raises(ValueError, match="fractions"):
        augmentation_robust_score(0.8, 0.7, 60.0, 0.4)


def test_score_config_checks():
    with pytest.raises(ValueError, match="--draws must be at least 3, got 2"):
        ScoreConfig(draws=2)
    with pytest.raises(ValueError, match="--lr-grid has an element that must be greater than 0, got -1.0"):
        ScoreConfig(lr_grid=(0.01, -1.0))


# ------------------------------------------------------------------------------------------- measurement


@pytest.fixture(scope="module")
def data(tiny_idx_dir):
    return get_dataset("fashion-mnist", "train", str(tiny_idx_dir)), get_dataset("fashion-mnist", "test",
                                                                                 str(tiny_idx_dir))


def test_validation_split_is_balanced_and_disjoint(data):
    train, _ = data
    fit, val = validation_split(train, 3, seed=0)
    assert len(val) == 30 and train.labels[val].bincount().tolist() == [3] * 10
    assert len(fit) + len(val) == len(train) and not set(fit.tolist()) & set(val.tolist())
    with pytest.raises(ValueError, match="val-per-class"):
        validation_split(train, 20, 0)


def test_dd_scores_hard_set(data, monkeypatch):
    train, test = data
    calls = []
    real_train_and_test = scores_mod.train_and_test

    def spy(x, y, ds, cfg, g, device, mean, std, lr=None, arch=None):
        acc = real_train_and_test(x, y, ds, cfg, g, device, mean, std, lr=lr, arch=arch)
        calls.append({"split": ds.split, "lr": lr, "augment": cfg.augment, "n": len(x), "acc": acc})
        return acc

    monkeypatch.setattr(scores_mod, "train_and_test", spy)
    g = torch.Generator().manual_seed(0)
    idx = torch.cat([train.sample_class(c, 2, g) for c in range(10)])
    images, labels = train.float_images(idx), train.labels[idx]
    scfg = ScoreConfig(draws=3, val_per_class=2, lr_grid=(0.01, 0.05), seed=0)
    out = dd_scores(images, labels, train, test, 0.9, CFG, scfg)
    assert len(out["rounds"]) == 3 and out["per_class"] == [2] * 10 and out["full_data_accuracy"] == 0.9
    # the lr is only ever chosen on the validation split; only the chosen lrs reach the test split
    grid_calls = [c for c in calls if c["split"] == "val"]
    assert grid_calls and all(c["lr"] in (0.01, 0.05) for c in grid_calls)
    assert {c["split"] for c in calls} == {"val", "test"}
    for _kind, chosen in out["lrs_chosen"].items():
        val_accs = {float(k): v for k, v in chosen["val_accs"].items()}
        assert chosen["lr"] == max((0.01, 0.05), key=lambda lr: (val_accs[lr], -[0.01, 0.05].index(lr)))
    assert set(out["lrs_chosen"]) == {"syn hard aug", "syn any no-aug", "rdm any aug", "rdm any no-aug"}
    # random draws: the set's per-class counts, never from the validation split, a new draw per round
    _, val = validation_split(train, 2, 0)
    draws = [r["random_indices"] for r in out["rounds"]]
    for d in draws:
        assert train.labels[torch.tensor(d)].bincount(minlength=10).tolist() == [2] * 10
        assert not set(d) & set(val.tolist())
    assert draws[0] != draws[1]
    # every score is the formula of the round's saved accuracies; the summaries are their means
    for r in out["rounds"]:
        a = r["accuracies"]
        assert a["syn_aug"] == a["syn_hard"]  # hard labels: "any" is "hard"
        assert r["hlr"] == pytest.approx(0.9 - a["syn_hard"])
        assert r["ior"] == pytest.approx(a["syn_aug"] - a["rdm_aug"])
        assert r["lrs"] == pytest.approx(label_robust_score(r["hlr"], r["ior"]))
        assert r["ars"] == pytest.approx(augmentation_robust_score(a["syn_aug"], a["rdm_aug"], a["syn_naug"],
                                                                   a["rdm_naug"]))
        assert all(0 <= v <= 1 for v in a.values()) and 0 <= r["lrs"] <= 1 and 0 <= r["ars"] <= 1
    for key in ("hlr", "ior", "lrs", "ars"):
        assert out[key]["mean"] == pytest.approx(sum(r[key] for r in out["rounds"]) / 3)
    test_calls = [c for c in calls if c["split"] == "test"]
    assert len(test_calls) == 3 * 4 and {c["augment"] for c in test_calls} == {"dsa", "none"}
    json.dumps(out)  # every number is JSON-serialisable


def test_dd_scores_learned_lr_is_used_not_searched(data):
    train, test = data
    idx = torch.cat([train.class_indices(c)[:1] for c in range(10)])
    out = dd_scores(train.float_images(idx), train.labels[idx], train, test, 0.9, CFG,
                    ScoreConfig(val_per_class=2, lr_grid=(0.01,)), lr=0.02)
    assert out["lrs_chosen"]["syn hard aug"] == {"lr": 0.02, "chosen_by": "the set's learned lr"}


def test_dd_scores_soft_labels_need_a_teacher(data):
    train, test = data
    idx = torch.cat([train.class_indices(c)[:1] for c in range(10)])
    images, soft = train.float_images(idx), torch.eye(10)
    with pytest.raises(ValueError, match="--teacher"):
        dd_scores(images, soft, train, test, 0.9, CFG, ScoreConfig(val_per_class=2, lr_grid=(0.01,)))
    teacher = train_teacher(train, NetTraining(width=4, depth=1, epochs=1), progress=False)
    out = dd_scores(images, soft, train, test, 0.9, CFG, ScoreConfig(val_per_class=2, lr_grid=(0.01,)), teacher=teacher)
    assert out["soft_labels"] and "syn any aug" in out["lrs_chosen"]


def test_full_data_accuracy_record(data):
    train, test = data
    rec = full_data_accuracy(train, test, CFG, ScoreConfig(val_per_class=2))
    assert 0 <= rec["accuracy"] <= 1 and rec["train_images"] == len(train) - 20 and rec["dataset"] == "fashion-mnist"


# ------------------------------------------------------------------------------------------------ command


@pytest.fixture(scope="module")
def pixel_set(tmp_path_factory, tiny_idx_dir):
    path = tmp_path_factory.mktemp("sc") / "rr.safetensors"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENDISTILL_FASHION_MNIST_DIR", str(tiny_idx_dir))
        with pytest.raises(SystemExit) as e:
            main(["init", "--backbone", "pixel", "--ipc", "1", "--out", str(path)])
    assert e.value.code == 0
    return path


def test_eval_scores_command(capsys, tmp_path, pixel_set):
    full = tmp_path / "full.json"
    base = ["eval", pixel_set, "--arch", "mlp", "--epochs", 1, "--runs", 1, "--scores", "--val-per-class", 2,
            "--lr-grid", "0.01"]
    code, _, err = cli(capsys, *base, "--full-data", full, "--out", tmp_path / "e.json")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--compute-full-data" in err
    assert not (tmp_path / "e.json").exists()  # refused before any training
    code, out, err = cli(capsys, *base, "--full-data", full, "--compute-full-data", "--out", tmp_path / "e.json")
    assert code == 0, err
    assert "HLR" in out and "LRS" in out
    saved = json.loads(full.read_text())
    assert 0 <= saved["accuracy"] <= 1 and saved["arch"] == "mlp"
    result = json.loads((tmp_path / "e.json").read_text())
    sc = result["scores"]
    assert sc["full_data_accuracy"] == saved["accuracy"] and len(sc["rounds"]) == 3
    for key in ("hlr", "ior", "lrs", "ars", "acc_syn_hard", "acc_rdm_aug", "acc_rdm_naug", "acc_syn_naug"):
        assert set(sc[key]) == {"mean", "std", "values"}
    # a second run reads the cached full-data accuracy instead of training on the whole split again
    code, _, err = cli(capsys, *base, "--full-data", full, "--out", tmp_path / "e2.json")
    assert code == 0, err
    assert json.loads((tmp_path / "e2.json").read_text())["scores"]["full_data"]["source"] == str(full)
    full.write_text("{}")
    code, _, err = cli(capsys, *base, "--full-data", full, "--out", tmp_path / "e3.json")
    assert code == 2 and "accuracy" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(capsys, *base[:-1], "0.01,x", "--compute-full-data")
    assert code == 2 and "--lr-grid" in err
