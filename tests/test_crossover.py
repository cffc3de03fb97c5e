"""The crossover study's bookkeeping (benchmarks/crossover.py): priority order of the work, the table (best coreset per
IPC, the highest curve) and the PNG plot from a results file, without training anything."""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import crossover  # noqa: E402
from screening import Results, Screening, settings_of  # noqa: E402


def test_tasks_put_every_curve_at_small_ipc_first():
    order = [(ipc, kind) for ipc, kind, _ in crossover.tasks([1, 500], ["kmeans"], 3)]
    assert order == [(1, "random"), (1, "coreset:kmeans"), (1, "distilled"), (500, "random"), (500, "coreset:kmeans"),
                     (500, "distilled"), (1, "latent-random"), (500, "latent-random")]
    keys = {kind: keys for ipc, kind, keys in crossover.tasks([1, 500], ["kmeans"], 3) if ipc == 1}
    assert keys["random"] == ["random/ipc1/draw0", "random/ipc1/draw1", "random/ipc1/draw2"]
    assert [k for ipc, kind, k in crossover.tasks([500], [], 3) if kind == "random"] == [["random/ipc500/draw0"]]


def test_report_table_and_plot(tmp_path):
    res = Results(tmp_path / "c.json", settings_of(Screening(iters=10)))
    rows = {"distilled/ipc1": 0.60, "coreset/kmeans/ipc1": 0.55, "coreset/herding/ipc1": 0.50,
            "random/ipc1/draw0": 0.40, "random/ipc1/draw1": 0.50, "distilled/ipc10": 0.70, "coreset/kmeans/ipc10": 0.72,
            "coreset/herding/ipc10": 0.74, "random/ipc10/draw0": 0.71, "latent-random/ipc1": 0.45}
    for k, v in rows.items():
        res.put(k, {"mean": v})
    text = crossover.report(res, [1, 10, 50], ["kmeans", "herding"], tmp_path)
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")
             and line[2].isdigit()}
    assert (
        "| 60.00 | 55.00 (kmeans) | kmeans 55.00, herding 50.00 | 45.00 (2 draws) | 45.00 | distilled |" in lines["1"]
    )
    assert "| 70.00 | 74.00 (herding) |" in lines["10"] and lines["10"].endswith("| coreset |")
    assert lines["50"].count("-") >= 5  # nothing measured yet: dashes, no winner
    assert "SCREENING" in text and (tmp_path / "crossover.md").read_text() == text
    im = Image.open(tmp_path / "crossover.png")
    assert im.size == (720, 440) and len(im.getcolors(maxcolors=1 << 16) or []) > 3
    again = Results(tmp_path / "c.json", settings_of(Screening(iters=10)))  # what finished survives a restart
    assert again.has("distilled/ipc10") and again.get("distilled/ipc10")["mean"] == 0.70


def test_plugin_targets_summary_lines(tmp_path):
    import argparse

    import plugin_targets

    res = Results(tmp_path / "t.json", settings_of(Screening(iters=10)))
    rows = {"prune/random-real-ipc5-draw0": 0.70, "prune/random-real-ipc5-draw1": 0.66, "prune/low-ipc5": 0.74,
            "prune-budget10/low-ipc5": 0.75, "dream/uniform-40": 0.70, "dream/uniform-200": 0.78,
            "dream/dream-40": 0.71, "dream/dream-80": 0.781, "dream/dream-120": 0.77, "dream/dream-200": 0.79}
    for k, v in rows.items():
        res.put(k, {"mean": v})
    args = argparse.Namespace(dream_steps="40,80,120,200", dream_init="real")
    lines = plugin_targets.summary(res, args)
    assert lines[0] == "random real IPC 5: 68.00 +- 2.83 over 2 draws"
    assert "YOCO prune --rule low: 74.00, +6.00 over random real IPC 5 (target +5: met)" in lines
    assert "YOCO prune-budget10 --rule low: 75.00, +7.00 over random real IPC 5 (target +5: met)" in lines
    assert lines[-1].endswith("dream reaches it at 80 steps = 40% of the steps (target <= 60%: met)")
    res.put("dream/dream-80", {"mean": 0.70})
    res.put("dream/dream-120", {"mean": 0.70})
    res.put("dream/dream-200", {"mean": 0.70})
    assert plugin_targets.summary(res, args)[-1].endswith("does not reach it within 200 steps (target <= 60%: not met)")
    res.put("prune/low-ipc5", {"mean": 0.72})
    assert "YOCO prune --rule low: 72.00, +4.00 over random real IPC 5 (target +5: not met)" in plugin_targets.summary(
        res, args)
