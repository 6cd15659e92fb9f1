"""Several seeds behind a clipping recommendation (notebook 04, section 5): the spread and the rule."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import mpcourse as mpc
from mpcourse import plots
from mpcourse.clipping import ClipByNorm
from mpcourse.studies import clip_study
from mpcourse.studies.seeds import Spread, check_seeds, decide

ORDER = clip_study.STRATEGY_ORDER


def test_spread_summarizes_the_seeds():
    s = Spread((0.40, 0.36, 0.38))
    assert s.mean == pytest.approx(0.38) and s.lo == 0.36 and s.hi == 0.40
    assert s.std == pytest.approx(np.std([0.40, 0.36, 0.38], ddof=1)) == pytest.approx(0.02)
    one = Spread((0.5,))
    assert (one.mean, one.std, one.lo, one.hi) == (0.5, 0.0, 0.5, 0.5)
    bad = Spread((0.5, math.nan))  # one diverged seed: no mean, no range
    assert not bad.finite and math.isnan(bad.mean) and math.isnan(bad.lo) and math.isnan(bad.hi)


def test_overlapping_ranges_give_no_clear_winner():
    # norm's mean is 12 % lower, but its worst seed (1.1) is above none's best (1.0)
    v = decide({"none": Spread((1.0, 1.1, 1.2)), "norm": Spread((0.85, 0.9, 1.1))}, order=ORDER)
    assert v.leader == "norm" and not v.clear and v.best == "none" == v.baseline


def test_a_clearly_better_strategy_is_named():
    spreads = {
        "none": Spread((1.0, 1.1, 1.2)),
        "norm": Spread((0.95, 1.0, 1.15)),  # overlaps none
        "agc": Spread((0.6, 0.7, 0.8)),  # worst seed 0.8 < none's best 1.0
    }
    assert decide(spreads, order=ORDER) == ("agc", "agc", True, "none")


def test_ties_go_to_the_simpler_strategy_and_one_seed_is_the_single_run_rule():
    # within tol of the lowest mean, the simpler strategy leads (here: the baseline itself)
    assert decide({"agc": Spread((0.99,)), "none": Spread((1.0,))}, tol=0.02, order=ORDER) == (
        "none",
        "none",
        False,
        "none",
    )
    assert decide({"agc": Spread((0.9,)), "none": Spread((1.0,))}, tol=0.02, order=ORDER).best == "agc"
    # a diverged baseline loses to any finite strategy; nothing finite: the baseline, unclear
    assert decide({"none": Spread((math.nan, 1.0)), "norm": Spread((2.0, 2.1))}, order=ORDER).clear
    assert decide({"none": Spread((math.nan,)), "norm": Spread((math.inf,))}, order=ORDER) == (
        "none",
        "none",
        False,
        "none",
    )
    with pytest.raises(ValueError, match="at least one"):
        decide({})


@pytest.mark.parametrize("bad", [[], (0, 0), (-1,), 3, "012", (1.5,), (True, False), None])
def test_bad_seeds_are_refused_naming_the_value(bad):
    with pytest.raises(ValueError, match=re.escape(f"got {bad!r}")):
        check_seeds(bad)


def test_recommend_refuses_bad_seeds_before_training(digits):
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"distinct ints >= 0.*got \(0, 0\)"):
        clip_study.recommend(digits, {"mlp": mpc.TrainConfig()}, {"none": None}, steps=2, seeds=(0, 0))
    assert check_seeds(range(3)) == (0, 1, 2) and check_seeds([np.int64(4)]) == (4,)


def test_recommend_over_seeds_trains_each_seed_and_reports_the_spread(digits):
    pytest.importorskip("torch")
    cfg = mpc.TrainConfig(precision="fp32", lr=1e-2)
    pols = {"none": None, "norm": ClipByNorm(0.05)}
    (row,) = clip_study.recommend(digits, {"mlp": cfg}, pols, steps=6, last=3, seeds=(0, 1))
    assert row["seeds"] == (0, 1)
    for k in pols:
        # each seed is the same run compare() gives with that seed: a different init and data order
        want = [clip_study.summarize(clip_study.compare(digits, cfg.replace(seed=s), {k: pols[k]}, model="mlp",
                                                        steps=6), last=3)[0]["final_loss"] for s in (0, 1)]  # fmt: skip
        assert row[f"per_seed_{k}"] == pytest.approx(want)
        assert want[0] != want[1]  # the seeds produce different runs
        assert row[f"loss_{k}"] == pytest.approx(np.mean(want))
        assert (row[f"lo_{k}"], row[f"hi_{k}"]) == (min(want), max(want))
        assert row[f"std_{k}"] == pytest.approx(np.std(want, ddof=1))
    v = decide({k: Spread(row[f"per_seed_{k}"]) for k in pols}, order=ORDER)
    assert (row["best"], row["leader"], row["clear"], row["baseline"]) == tuple(v) and row["tol"] == 0.02
    # seeds=None keeps the one-run contract: the config's own seed, the old keys
    (old,) = clip_study.recommend(digits, {"mlp": cfg.replace(seed=1)}, pols, steps=6, last=3)
    assert old["seeds"] == (1,) and old["loss_none"] == pytest.approx(row["per_seed_none"][1])
    assert {"best", "no_clip_loss", "best_loss", "gain", "loss_norm", "acc_norm"} <= set(old)


def _rows():
    base = {"precision": "fp16", "seeds": (0, 1, 2), "baseline": "none"}
    clear = {"model": "cnn", "best": "agc", "leader": "agc", "clear": True, "no_clip_loss": 1.1, "best_loss": 0.7}
    vague = {"model": "mlp", "best": "none", "leader": "agc", "clear": False, "no_clip_loss": 1.1, "best_loss": 1.1}
    rows = []
    for r, agc in ((clear, (0.6, 0.7, 0.8)), (vague, (0.9, 1.0, 1.15))):
        row = {**base, **r, "gain": 1 - r["best_loss"] / r["no_clip_loss"]}
        for k, vals in (("none", (1.0, 1.1, 1.2)), ("agc", agc)):
            s = Spread(vals)
            row.update(
                {f"loss_{k}": s.mean, f"std_{k}": s.std, f"lo_{k}": s.lo, f"hi_{k}": s.hi, f"per_seed_{k}": vals}
            )
        rows.append(row)
    return rows


def test_explain_and_spread_table_show_the_ranges():
    text = clip_study.explain(_rows()).splitlines()
    assert text[0].startswith("cnn (fp16): agc -- mean final loss 0.700 (seeds 0.600-0.800) vs 1.100")
    assert "without clipping (36% lower; the ranges over 3 seeds do not overlap)" in text[0]
    assert text[1].startswith("mlp (fp16): no clear winner (within seed spread) -- agc has the lowest mean")
    assert "overlaps none's, 1.100 (seeds 1.000-1.200); 3 seeds" in text[1]
    table = clip_study.spread_table(_rows(), ["none", "agc"])
    assert table[0] == {
        "model": "cnn",
        "recommended": "agc",
        "each seed": "agc, agc, agc",
        "none": "1.100 [1.000, 1.200]",
        "agc": "0.700 [0.600, 0.800]",
    }
    # lowest on every seed, yet the ranges overlap: the seeds differ more than the strategies do
    assert table[1]["recommended"] == "no clear winner" and table[1]["each seed"] == "agc, agc, agc"


def test_seed_marks_apply_the_one_seed_rule_to_each_seed():
    row = {"seeds": (0, 1, 2), "tol": 0.02, "per_seed_none": (1.0, 1.0, 1.0), "per_seed_norm": (0.9, 0.99, 1.1)}
    # seed 0: norm 10 % lower; seed 1: within the 2 % tie margin -> none; seed 2: none is lower
    assert clip_study.seed_marks(row, ["none", "norm"]) == ("norm", "none", "none")
    assert clip_study.seed_marks({**row, "tol": 0.0}, ["none", "norm"]) == ("norm", "norm", "none")


def test_heatmap_and_spread_figure_show_the_seed_spread():
    rows = _rows()
    heat = plots.recommendation_heatmap(rows, ["none", "agc"])
    assert "3 seeds" in heat.layout.title.text and "nats" in heat.layout.title.text
    assert heat.data[0].text[0][1] == "0.700 *<br>[0.600, 0.800]"
    assert "*" not in heat.data[0].text[1][1]  # no clear winner: no star
    assert list(heat.data[0].y) == ["cnn", "mlp (no clear winner)"]
    assert "per seed: 0.600, 0.700, 0.800" in heat.data[0].customdata[0][1]
    fig = plots.recommendation_spread(rows, ["none", "agc"])
    assert "3 seeds" in fig.layout.title.text and "nats" in fig.layout.yaxis.title.text
    mean, seeds = fig.data[0], fig.data[1]
    np.testing.assert_allclose(mean.y, [1.1, 0.7])
    np.testing.assert_allclose(mean.error_y.array, [0.1, 0.1])  # up to the worst seed
    np.testing.assert_allclose(mean.error_y.arrayminus, [0.1, 0.1])  # down to the best seed
    assert list(seeds.y) == [1.0, 1.1, 1.2, 0.6, 0.7, 0.8]
