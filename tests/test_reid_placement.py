"""Placement search (visionzoo.reid_placement): search spaces, the multirun command, collecting runs, latency, report;
and the real thing end to end: `python train.py -m` over two placements on a tiny Market-1501 layout, then `table`."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from tests.hydra_helpers import ROOT, compose_cfg, run_train_cli
from tests.test_reid_data import write_market
from tests.test_reid_task import _tiny_overrides
from visionzoo.errors import ConfigError
from visionzoo.reid_placement import (
    PlacementRun,
    collect_runs,
    measure_latency,
    pareto_front,
    placement_label,
    search_space,
    sweep_command,
    write_report,
)

TINY = ["model=reid_resnet50", "data=market1501", "+model.kwargs.layers=[1,2,1,1]"]


def test_search_spaces():
    assert search_space("stage-ends") == [[], ["layer1.2"], ["layer2.3"], ["layer3.5"], ["layer4.2"]]
    singles = search_space("singles")
    assert singles[0] == [] and len(singles) == 1 + 16 and ["layer3.0"] in singles
    assert search_space("stage-all")[2] == ["layer2.0", "layer2.1", "layer2.2", "layer2.3"]
    combos = search_space("end-combos", layers=[1, 2, 1, 1])
    assert (
        len(combos) == 16
        and combos[0] == []
        and combos[-1] == ["layer1.0", "layer2.1", "layer3.0", "layer4.0"]
    )
    assert len({tuple(c) for c in combos}) == 16
    with pytest.raises(ConfigError, match="unknown search space 'nas'"):
        search_space("nas")


def test_sweep_command_is_one_hydra_sweep_over_the_placements():
    space = search_space("stage-ends")
    cmd = sweep_command(space, ["data.root=/d", "trainer=gpu"])
    assert cmd.startswith("python train.py -m model=reid_resnet50 data=market1501 ")
    import shlex

    args = shlex.split(cmd)
    sweep = next(a for a in args if a.startswith("model.attn_positions="))
    override = OverridesParser.create().parse_overrides([sweep])[0]
    assert override.is_sweep_override()
    assert list(override.sweep_iterator()) == space
    assert args[-2:] == ["data.root=/d", "trainer=gpu"]


def test_placement_label():
    assert placement_label([]) == "none"
    assert placement_label([(1, 3), (2, 5)]) == "layer2.3+layer3.5"
    assert placement_label(["layer1.0"]) == "layer1.0"


def _fake_job(job_dir, positions, metrics, tmp_path, extra=()):
    cfg = compose_cfg([*TINY, f"model.attn_positions={positions}", *extra], tmp_path / "out")
    (job_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, job_dir / ".hydra" / "config.yaml")
    if metrics is not None:
        (job_dir / "metrics.json").write_text(json.dumps(metrics))


def _scores(val_map: float, test_map: float) -> dict[str, float]:
    return {
        "val/mAP": val_map,
        "val/rank1": val_map + 0.2,
        "test/mAP": test_map,
        "test/rank1": test_map + 0.2,
    }


def test_collect_runs_groups_and_averages(tmp_path):
    """Old behaviour (the bug): the scores were test/* when present, so the search selected on the test set."""
    multirun = tmp_path / "multirun"
    _fake_job(multirun / "0", "[]", _scores(0.40, 0.50), tmp_path)
    _fake_job(multirun / "1", "[layer2.1]", _scores(0.50, 0.60), tmp_path)
    _fake_job(multirun / "2", "[[1,-1]]", _scores(0.54, 0.64), tmp_path)  # same network as 1
    _fake_job(multirun / "3", "[layer3.0]", None, tmp_path)  # crashed: no metrics.json
    _fake_job(multirun / "4", "[layer3.0]", {"val/mAP": 0.55, "val/rank1": 0.75}, tmp_path)  # test=false
    _fake_job(multirun / "5", "[layer4.0]", {"test/mAP": 0.9}, tmp_path)  # no validation: cannot be selected
    runs = collect_runs(multirun)
    assert [r.label for r in runs] == ["none", "layer2.1", "layer3.0"]
    none, l2, l3 = runs
    assert none.metrics["mAP"] == pytest.approx(0.40) and len(none.runs) == 1  # selection scores: val
    assert none.test_metrics["mAP"] == pytest.approx(0.50)
    assert l2.positions == [(1, 1)] and len(l2.runs) == 2
    assert l2.metrics["mAP"] == pytest.approx(0.52) and l2.metrics["rank1"] == pytest.approx(0.72)
    assert l2.test_metrics["mAP"] == pytest.approx(0.62)
    assert l3.metrics == {"mAP": pytest.approx(0.55), "rank1": pytest.approx(0.75)} and l3.test_metrics == {}
    assert l2.attn_block == "lab"


def test_collect_runs_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        collect_runs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no finished Re-ID run"):
        collect_runs(tmp_path / "empty")
    _fake_job(tmp_path / "test_only" / "0", "[]", {"test/mAP": 0.6}, tmp_path)
    with pytest.raises(ConfigError, match="selects on validation"):
        collect_runs(tmp_path / "test_only")


def test_placement_search_selects_on_val_and_reports_test_for_the_selected_only(tmp_path):
    """Val and test disagree on purpose: the front follows val; test appears once, for the front only."""
    runs = [
        _run([], 0.0, 0.80, test_map=0.70),
        _run([(1, 3)], 0.02, 0.83, test_map=0.60),  # better on val: selected, although worse on test
        _run([(2, 5)], 0.04, 0.82, test_map=0.95),  # best on test, dominated on val: not selected
    ]
    assert [r.label for r in pareto_front(runs)] == ["none", "layer2.3"]
    text = write_report(runs, tmp_path / "report", title="t").read_text()
    rows = {
        row.split("|")[1].strip(): row
        for row in text.splitlines()
        if row.startswith("| ") and "placement" not in row
    }
    assert rows["layer2.3 *"].rstrip(" |").endswith("60.0 | 70.0")  # test mAP / rank-1 of the selected
    assert "95.0" not in text and rows["layer3.5"].rstrip(" |").endswith("- | -")
    with open(tmp_path / "report" / "placement.csv") as fh:
        by_label = {row["placement"]: row for row in csv.DictReader(fh)}
    assert by_label["layer3.5"]["test_mAP"] == "" and by_label["layer3.5"]["selected"] == "False"
    assert float(by_label["layer2.3"]["test_mAP"]) == pytest.approx(0.60)


def test_measure_latency_adds_the_plain_network_and_fills_numbers(tmp_path):
    multirun = tmp_path / "multirun"
    _fake_job(multirun / "0", "[layer1.0,layer2.1]", _scores(0.6, 0.6), tmp_path)
    _fake_job(
        multirun / "1",
        "[layer1.0,layer2.1]",
        _scores(0.5, 0.5),
        tmp_path,
        extra=["model.attn_block=se"],
    )
    runs = collect_runs(multirun)
    assert len(runs) == 2 and {r.attn_block for r in runs} == {"lab", "se"}
    plain = measure_latency(runs, batch_size=2, input_size=(64, 32), rounds=2)
    assert runs[0] is plain and plain.positions == [] and plain.overhead == 0.0
    assert len(runs) == 3
    for r in runs:
        assert r.latency_ms > 0 and math.isfinite(r.overhead)
    # lab adds an ECA conv (k=5 at 256 and 512 channels) + a 2->1 7x7 conv + gamma per block
    c1, c2 = 256, 512
    assert runs[1].params - plain.params == (5 + 2 * 49 + 1 + c1) + (5 + 2 * 49 + 1 + c2)
    assert runs[2].params > plain.params


def test_measure_latency_refuses_mixed_networks(tmp_path):
    multirun = tmp_path / "multirun"
    _fake_job(multirun / "0", "[]", {"val/mAP": 0.6}, tmp_path)
    _fake_job(multirun / "1", "[]", {"val/mAP": 0.6}, tmp_path, extra=["model.kwargs.last_stride=2"])
    with pytest.raises(ConfigError, match="different base networks"):
        measure_latency(collect_runs(multirun), batch_size=1, input_size=(64, 32), rounds=1)


def _run(label_positions, overhead, mAP, test_map=None):
    r = PlacementRun("m", {}, label_positions, "lab", metrics={"mAP": mAP, "rank1": mAP + 0.1})
    if test_map is not None:
        r.test_metrics = {"mAP": test_map, "rank1": test_map + 0.1}
    r.overhead, r.latency_ms, r.params, r.runs = overhead, 100 * (1 + overhead), 1000, ["x"]
    return r


def test_pareto_front_and_report(tmp_path):
    runs = [
        _run([], 0.0, 0.80),
        _run([(0, 0)], 0.03, 0.79),  # slower and worse than plain: dominated
        _run([(1, 3)], 0.02, 0.83),
        _run([(2, 5)], 0.04, 0.85),
        _run([(1, 3), (2, 5)], 0.06, 0.84),  # dominated by layer3.5
    ]
    assert [r.label for r in pareto_front(runs)] == ["none", "layer2.3", "layer3.5"]
    md = write_report(runs, tmp_path / "report", title="t")
    text = md.read_text()
    assert "| layer3.5 * | lab | 1 |" in text and "| layer1.0 | lab |" in text
    assert "+4.0" in text and "85.0" in text
    lines = [row for row in text.splitlines() if row.startswith("| ") and "placement" not in row]
    assert [row.split("|")[1].strip() for row in lines] == [
        "none *",
        "layer2.3 *",
        "layer1.0",
        "layer3.5 *",
        "layer2.3+layer3.5",
    ]
    with open(tmp_path / "report" / "placement.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5 and float(rows[3]["val_mAP"]) == pytest.approx(0.85)
    assert (tmp_path / "report" / "placement.png").stat().st_size > 1000


def test_placement_search_through_train_py_multirun(tmp_path):
    """Acceptance: training + evaluation through train.py on a tiny Market-1501 layout, as a two-placement
    multirun, then the accuracy-vs-latency table over its folder."""
    write_market(tmp_path / "data")
    tiny = [o for o in _tiny_overrides(tmp_path / "data") if not o.startswith("model.attn_positions")]
    args = ["-m", *tiny, "callbacks=none", "task_name=placement", "model.attn_positions=[],[layer2.0]"]
    proc = run_train_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (multirun,) = (tmp_path / "logs" / "placement" / "multiruns").iterdir()
    for job in ("0", "1"):
        metrics = json.loads((multirun / job / "metrics.json").read_text())
        assert 0.0 <= metrics["test/mAP"] <= 1.0 and 0.0 <= metrics["test/rank1"] <= 1.0
        assert 0.0 <= metrics["val/mAP"] <= 1.0  # the identity-disjoint validation hold-out: what selects
        assert metrics["_splits"]["val"]["sha256"] != metrics["_splits"]["test"]["sha256"]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "visionzoo.reid_placement",
            "table",
            str(multirun),
            "--batch-size",
            "2",
            "--input-size",
            "64",
            "32",
            "--rounds",
            "2",
            "--out",
            str(tmp_path / "table"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = (tmp_path / "table" / "placement.md").read_text()
    assert "| none" in text and "| layer2.0" in text
    assert (tmp_path / "table" / "placement.png").is_file()
