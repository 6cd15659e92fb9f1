"""mpcourse.production: fallback, phases, checkpoints (incl. a real SIGKILL), monitor, validate."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import mpcourse as mpc
from mpcourse import production as prod
from mpcourse.engines.portable import array_leaves, export_state, rng_state
from mpcourse.history import StepRecord
from mpcourse.production.checkpoint import (
    CheckpointError,
    CheckpointManager,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    write_checkpoint,
)
from mpcourse.production.monitor import COLUMNS, Monitor

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_MLX_ENGINE = (
    importlib.util.find_spec("mlx") is not None and importlib.util.find_spec("mpcourse.engines.mlx.engine") is not None
)
BACKENDS = [
    pytest.param("torch", marks=pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")),
    pytest.param(
        "mlx",
        marks=pytest.mark.skipif(
            not HAS_MLX_ENGINE, reason="the MLX engine (mpcourse.engines.mlx.engine) or mlx is not available here"
        ),
    ),
]


@pytest.fixture(scope="module")
def storm(digits: mpc.data.Dataset) -> mpc.data.Dataset:
    # Planted fault: features left in raw units (x 1e5). The first layer's fp16 outputs pass
    # 65504, the forward pass is inf every step: an overflow storm no loss scale can fix.
    return dataclasses.replace(digits, x_train=digits.x_train * 1e5, x_test=digits.x_test * 1e5)


def _engine(backend: str, digits: mpc.data.Dataset, **cfg: object) -> mpc.engines.Engine:
    return mpc.make_engine(backend, "mlp", mpc.TrainConfig(**cfg), device="cpu", data=digits, verbose=False)


def _model_arrays(engine: object) -> dict[str, np.ndarray]:
    fw = export_state(engine)["framework"]
    return array_leaves(fw["model"] if "model" in fw else fw["master"])  # torch: model, MLX: master


def _same_bits(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes() for k in a
    )


def _rec(step: int, found_inf: bool, scale: float = 1024.0) -> StepRecord:
    return StepRecord(
        step=step,
        loss=1.0,
        scale=scale,
        grad_norm=1.0,
        found_inf=found_inf,
        skipped=found_inf,
        seconds=0.01,
        samples=64,
    )


# --- fallback -----------------------------------------------------------------------------------
def test_fallback_policy_rules() -> None:
    pol = prod.FallbackPolicy(window=4, max_overflow_rate=0.5)
    assert pol.check([]) is None
    assert pol.check([_rec(0, True), _rec(1, True), _rec(2, True)]) is None  # window not full yet
    assert pol.check([_rec(i, i == 1) for i in range(4)]) is None  # 25% < 50%
    reason, ev = pol.check([_rec(i, i in (1, 3)) for i in range(4)])  # 50% reaches 50%
    assert reason == "overflow_rate" and ev["overflow_steps"] == [1, 3] and ev["window"] == [0, 3]
    reason, ev = pol.check([_rec(0, False), _rec(1, True, scale=2.0)], min_scale=2.0)
    assert reason == "min_scale" and ev["scale"] == 2.0
    assert pol.check([_rec(0, False, scale=2.0)], min_scale=2.0) is None  # at the floor, no overflow
    assert pol.next_precision("fp16") == "bf16" and pol.next_precision("fp32") is None
    assert prod.FallbackPolicy(chain=("fp16", "fp32")).next_precision("fp16") == "fp32"
    with pytest.raises(ValueError, match="less to more range"):
        prod.FallbackPolicy(chain=("fp32", "fp16"))
    with pytest.raises(ValueError, match="max_overflow_rate"):
        prod.FallbackPolicy(max_overflow_rate=0)
    with pytest.raises(ValueError, match="window"):
        prod.FallbackPolicy(window=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fallback_triggers_on_overflow_storm_and_training_continues(backend: str, storm: mpc.data.Dataset) -> None:
    tr = prod.Trainer(
        backend,
        "mlp",
        mpc.TrainConfig(precision="fp16"),
        storm,
        device="cpu",
        fallback=prod.FallbackPolicy(window=8, max_overflow_rate=0.5),
    )
    before = _model_arrays(tr.engine)
    hist = tr.fit(steps=24)
    assert len(hist) == 24
    (ev,) = [e for e in hist.events if e["kind"] == "fallback"]
    assert (ev["step"], ev["from"], ev["to"], ev["reason"]) == (8, "fp16", "bf16", "overflow_rate")
    assert ev["evidence"]["overflow_rate"] == 1.0 and ev["evidence"]["overflow_steps"] == list(range(8))
    assert all(r.skipped for r in hist.records[:8])
    assert _same_bits(before, _model_arrays(tr.engine)) is False  # it trained after the switch
    after = hist.records[8:]
    assert not any(r.skipped for r in after) and np.isfinite([r.loss for r in after]).all()
    assert tr.engine.config.precision == "bf16" and tr.engine.step == 24


@pytest.mark.parametrize("backend", BACKENDS)
def test_fallback_when_scale_reaches_its_minimum(backend: str, digits: mpc.data.Dataset) -> None:
    # Planted: a scale pinned far too high (2**40, floor 2**36): every scaled backward overflows.
    cfg = mpc.TrainConfig(precision="fp16", init_scale=2.0**40, min_scale=2.0**36)
    tr = prod.Trainer(backend, "mlp", cfg, digits, device="cpu", fallback=prod.FallbackPolicy(window=50))
    hist = tr.fit(steps=10)
    (ev,) = hist.events
    assert ev["reason"] == "min_scale" and ev["step"] == 5 and ev["evidence"]["scale"] == 2.0**36
    assert hist.scales[4] == 2.0**36 and not hist.records[-1].skipped


@pytest.mark.parametrize("backend", BACKENDS)
def test_switch_precision_takes_over_state_exactly(backend: str, digits: mpc.data.Dataset) -> None:
    eng = _engine(backend, digits, precision="fp16")
    eng.fit(digits, steps=5, progress=False)
    new = prod.switch_precision(eng, "bf16")
    assert new.config.precision == "bf16" and new.config.scaling_mode == "none"
    assert (new.step, new.epoch, new.batch_in_epoch) == (eng.step, eng.epoch, eng.batch_in_epoch)
    old_opt = array_leaves(export_state(eng)["framework"]["optimizer"])
    assert _same_bits(_model_arrays(eng), _model_arrays(new))
    assert _same_bits(old_opt, array_leaves(export_state(new)["framework"]["optimizer"]))
    with pytest.raises(ValueError, match="precision must be one of"):
        prod.switch_precision(new, "fp4")


# --- phases and memory ---------------------------------------------------------------------------
def test_precision_schedule_rules() -> None:
    s = prod.PrecisionSchedule.fp32_warmup(10, then="fp16")
    assert [s.phase_at(i).precision for i in (0, 9, 10, 999)] == ["fp32", "fp32", "fp16", "fp16"]
    assert s.starts() == [0, 10] and s.next_boundary(3) == 10 and s.next_boundary(10) is None
    m = prod.PrecisionSchedule.from_map({"warm": "fp32", "main": "bf16", "end": "fp32"}, steps={"warm": 5, "main": 20})
    assert [m.phase_at(i).name for i in (4, 5, 24, 25)] == ["warm", "main", "main", "end"]
    with pytest.raises(ValueError, match="every phase but the last"):
        prod.PrecisionSchedule([("a", "fp32"), ("b", "fp16")])
    with pytest.raises(ValueError, match="precision must be one of"):
        prod.PrecisionSchedule([("a", "fp64")])


@pytest.mark.parametrize("backend", BACKENDS)
def test_trainer_follows_schedule(backend: str, digits: mpc.data.Dataset) -> None:
    tr = prod.Trainer(
        backend,
        "mlp",
        mpc.TrainConfig(precision="fp16"),
        digits,
        device="cpu",
        schedule=prod.PrecisionSchedule.fp32_warmup(6, then="fp16"),
    )
    hist = tr.fit(steps=10)
    assert hist.events == [{"step": 6, "kind": "phase", "from": "fp32", "to": "fp16", "phase": "main"}]
    assert hist.scales[:6].tolist() == [1.0] * 6 and hist.scales[6] == 2.0**16
    assert tr.engine.config == mpc.TrainConfig(precision="fp16")


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_estimate_uses_real_counts(backend: str, digits: mpc.data.Dataset) -> None:
    eng = _engine(backend, digits)
    p = 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10  # the small mlp's weights and biases
    small = prod.estimate_memory(eng, digits.x_train[:8], "fp16")
    assert small.parameters == p
    assert small.activations >= 8 * (256 + 256 + 10)  # at least every Linear's output
    ref = prod.estimate_memory(eng, digits.x_train[:8], "fp32")
    # Saving = half the activation bytes, minus the fp16 weight copy: negative for a tiny batch...
    assert small.saved_vs(ref) == 2 * small.activations - 2 * p < 0
    big = prod.PrecisionSchedule.fp32_warmup(5).memory_estimates(eng, digits.x_train[:1024])
    assert big[0]["saved_bytes"] == 0 and big[1]["saved_bytes"] > 0  # ...positive for a big one


# --- checkpoints -----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_checkpoint_round_trip_is_bit_exact(
    backend: str, precision: str, digits: mpc.data.Dataset, tmp_path: Path
) -> None:
    a = _engine(backend, digits, precision=precision, optimizer="adamw")
    a.fit(digits, steps=27, progress=False)  # ends mid-epoch (23 batches per epoch)
    path = save_checkpoint(tmp_path / "a.mpck", a)
    drawn = np.random.random(3)  # the global RNGs move on after the save...
    b = _engine(backend, digits, precision=precision, optimizer="adamw")
    ck = load_checkpoint(path, b)
    assert prod.state_differences(ck.state["rng"], rng_state(backend)) == []
    assert np.random.random(3).tolist() == drawn.tolist()  # ...and loading puts them back
    assert ck.meta["step"] == 27 and ck.meta["precision"] == precision
    sa, sb = export_state(a), export_state(b)
    assert _same_bits(array_leaves(sa), array_leaves(sb))
    assert (b.step, b.epoch, b.batch_in_epoch, b.scale) == (a.step, a.epoch, a.batch_in_epoch, a.scale)
    ha, hb = a.fit(digits, steps=12, progress=False), b.fit(digits, steps=12, progress=False)
    assert ha.losses.tobytes() == hb.losses.tobytes()
    assert _same_bits(_model_arrays(a), _model_arrays(b))


def test_container_round_trips_python_and_numpy_values(tmp_path: Path) -> None:
    import ml_dtypes

    state = {
        "t": (1, 2.5, None),
        "ints": {0: "a", 7: [True, float("inf")]},
        "f": np.float32(0.1),
        "bf": np.arange(6, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(2, 3),
        "__mpc_x": 1,
        "nested": [np.int64(3), {"e": np.zeros((0, 4), dtype=np.uint8)}],
    }
    got = read_checkpoint(write_checkpoint(tmp_path / "c.mpck", state, {"note": "x"})).state
    assert got["t"] == (1, 2.5, None) and got["ints"] == {0: "a", 7: [True, float("inf")]}
    assert got["f"] == np.float32(0.1) and got["f"].dtype == np.float32 and got["__mpc_x"] == 1
    assert got["bf"].dtype == state["bf"].dtype and got["bf"].tobytes() == state["bf"].tobytes()
    assert got["nested"][0] == 3 and got["nested"][1]["e"].shape == (0, 4)
    assert prod.state_differences(got, state) == []
    other = {**state, "f": np.float32(0.2), "bf": state["bf"].astype(np.float32)}
    assert prod.state_differences(got, other) == ["bf", "f"]
    assert prod.state_differences({"a": np.zeros(2)}, {"b": np.zeros(2)}) == ["a", "b"]
    with pytest.raises(TypeError, match="cannot store object"):
        write_checkpoint(tmp_path / "d.mpck", {"x": object()}, {})
    assert not (tmp_path / "d.mpck").exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_files_are_refused_and_the_previous_checkpoint_survives(
    backend: str, digits: mpc.data.Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eng = _engine(backend, digits, precision="fp16")
    eng.fit(digits, steps=3, progress=False)
    path = save_checkpoint(tmp_path / "ckpt.mpck", eng)
    good = path.read_bytes()

    (tmp_path / "trunc.mpck").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"truncated: expected \d+ bytes, found \d+"):
        read_checkpoint(tmp_path / "trunc.mpck")
    flipped = bytearray(good)
    flipped[-5] ^= 0xFF
    (tmp_path / "flip.mpck").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="corrupt: its sha256 checksum"):
        read_checkpoint(tmp_path / "flip.mpck")
    (tmp_path / "other.mpck").write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(CheckpointError, match="not an mpcourse checkpoint"):
        read_checkpoint(tmp_path / "other.mpck")

    # A crash while the next checkpoint is written (here: the disk fails at fsync).
    eng.fit(digits, steps=4, progress=False)

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error (injected)")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="injected"):
        save_checkpoint(path, eng)
    monkeypatch.undo()
    assert path.read_bytes() == good and read_checkpoint(path).meta["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.mpck", "flip.mpck", "other.mpck", "trunc.mpck"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_manager_skips_a_truncated_newest_file(backend: str, digits: mpc.data.Dataset, tmp_path: Path) -> None:
    eng = _engine(backend, digits)
    mgr = CheckpointManager(tmp_path, every=2, keep=2)
    for _ in range(6):
        eng.fit(digits, steps=1, progress=False)
        mgr.maybe_save(eng)
    assert [p.name for p in mgr.paths()] == ["ckpt_00000004.mpck", "ckpt_00000006.mpck"]
    newest = mgr.paths()[-1]
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(UserWarning, match="truncated"):
        assert mgr.latest() == mgr.paths()[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_mismatched_checkpoint_is_refused_and_engine_untouched(
    backend: str, digits: mpc.data.Dataset, tmp_path: Path
) -> None:
    eng = _engine(backend, digits, lr=1e-3)
    eng.fit(digits, steps=2, progress=False)
    path = save_checkpoint(tmp_path / "a.mpck", eng)
    other = _engine(backend, digits, lr=1e-2)
    before = _model_arrays(other)
    with pytest.raises(CheckpointError, match=r"config\.lr: 0\.001 in the checkpoint, 0\.01 in the engine"):
        load_checkpoint(path, other)
    cnn = mpc.make_engine(backend, "cnn", mpc.TrainConfig(), device="cpu", data=digits, verbose=False)
    with pytest.raises(CheckpointError, match="model: 'mlp' in the checkpoint, 'cnn' in the engine"):
        load_checkpoint(path, cnn)
    assert _same_bits(before, _model_arrays(other)) and other.step == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_trainer_resume_reproduces_fallback_run(backend: str, storm: mpc.data.Dataset, tmp_path: Path) -> None:
    def trainer(directory: Path) -> prod.Trainer:
        return prod.Trainer(
            backend,
            "mlp",
            mpc.TrainConfig(precision="fp16"),
            storm,
            device="cpu",
            fallback=prod.FallbackPolicy(window=6, max_overflow_rate=0.5),
            checkpoints=CheckpointManager(directory, every=4, keep=2),
        )

    full = trainer(tmp_path / "full")
    full.run_to(20)
    crashed = trainer(tmp_path / "crash")
    crashed.run_to(13)  # "crash" after step 13; newest checkpoint: 12
    resumed = trainer(tmp_path / "crash")
    assert resumed.resume(tmp_path / "crash").meta["step"] == 12
    assert resumed.engine.config.precision == "bf16"
    resumed.run_to(20)
    assert resumed.events == full.events and len(resumed.history) == 20
    assert _same_bits(_model_arrays(full.engine), _model_arrays(resumed.engine))


def _train_cmd(backend: str, directory: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mpcourse.production",
        "train",
        "--backend",
        backend,
        "--dir",
        str(directory),
        "--steps",
        "40",
        "--every",
        "5",
        "--precision",
        "fp16",
        *extra,
    ]


def _env() -> dict[str, str]:
    # One thread per child: two OpenMP threads crawl on a shared, busy CPU; both twins get the same.
    return {**os.environ, "PYTHONPATH": str(ROOT), "MPCOURSE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkilled_run_resumes_to_the_same_final_parameters(backend: str, tmp_path: Path) -> None:
    full = subprocess.Popen(
        _train_cmd(backend, tmp_path / "full"), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )  # the uninterrupted twin, alongside
    crash_dir = tmp_path / "crash"
    proc = subprocess.Popen(
        _train_cmd(backend, crash_dir, "--throttle", "0.1"), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while not any(int(p.stem.split("_")[1]) >= 10 for p in crash_dir.glob("ckpt_*.mpck")):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "exited early"
        assert time.monotonic() < deadline, "no checkpoint at step 10 within 240 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (crash_dir / "final.mpck").exists()  # it really died mid-run
    resumed = subprocess.run(
        _train_cmd(backend, crash_dir, "--resume"), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    info = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert 10 <= info["resumed_from"] < 40 and info["step"] == 40
    _, err = full.communicate(timeout=300)
    assert full.returncode == 0, err
    a, b = read_checkpoint(tmp_path / "full" / "final.mpck"), read_checkpoint(crash_dir / "final.mpck")
    assert a.meta["step"] == b.meta["step"] == 40
    assert _same_bits(array_leaves(a.state["framework"]), array_leaves(b.state["framework"]))
    assert prod.state_differences(a.state["framework"], b.state["framework"]) == []
    assert prod.state_differences(a.state, b.state) == []  # RNG state included


# --- monitor -------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_monitor_tracks_and_exports(backend: str, storm: mpc.data.Dataset, tmp_path: Path) -> None:
    eng = _engine(backend, storm, precision="fp16")
    mon = Monitor(window=4)
    hist = eng.fit(storm, steps=6, progress=False, callback=mon)
    assert [r["step"] for r in mon.rows] == list(range(6))
    assert mon.rows[-1]["overflow_rate"] == 1.0 and mon.rows[-1]["nan_count"] == 6
    assert mon.rows[-1]["samples_per_second"] == pytest.approx(
        sum(r.samples for r in hist.records[-4:]) / sum(r.seconds for r in hist.records[-4:])
    )
    assert mon.rows[-1]["rss_mb"] > 0 and mon.rows[-1]["scale"] == hist.records[-1].scale
    s = mon.summary()
    assert s["steps"] == 6 and s["overflow_rate"] == 1.0 and s["final_scale"] == hist.records[-1].scale
    lines = mon.to_csv(tmp_path / "m.csv").read_text().splitlines()
    assert lines[0].split(",") == list(COLUMNS) and len(lines) == 7
    data = json.loads(mon.to_json(tmp_path / "m.json").read_text())
    assert data["summary"]["nan_count"] == 6 and len(data["rows"]) == 6
    replay = Monitor.from_history(hist, window=4)
    assert replay.column("overflow_rate") == mon.column("overflow_rate")


def test_monitor_tensorboard_is_optional(tmp_path: Path) -> None:
    from mpcourse.engines.torch.tensorboard import tensorboard_available

    mon = Monitor.from_history(mpc.History(records=[_rec(0, False), _rec(1, True)]))
    out = mon.to_tensorboard(tmp_path / "tb")
    if tensorboard_available():
        assert out == tmp_path / "tb" and any((tmp_path / "tb").rglob("events.out.tfevents*"))
    else:
        assert out is None and not (tmp_path / "tb").exists()
    with pytest.raises(ValueError, match="unknown column"):
        mon.column("nope")


# --- validate ------------------------------------------------------------------------------------
def test_judge_pass_fail_rules() -> None:
    ok = prod.judge(fp32_accuracy=0.95, mixed_accuracy=0.945, overflow_rate=0.01, speedup=0.5)
    assert [c.passed for c in ok] == [True, True]  # speed judged only on request
    assert [c.passed for c in prod.judge(fp32_accuracy=0.95, mixed_accuracy=0.935, overflow_rate=0.0, speedup=1.0)] == [
        False,
        True,
    ]
    assert prod.judge(fp32_accuracy=0.90, mixed_accuracy=0.99, overflow_rate=0.0, speedup=1.0)[0].passed
    assert not prod.judge(fp32_accuracy=0.9, mixed_accuracy=0.9, overflow_rate=0.05, speedup=1.0)[1].passed
    assert prod.judge(fp32_accuracy=0.9, mixed_accuracy=0.9, overflow_rate=0.0499, speedup=1.0)[1].passed
    fast = prod.judge(fp32_accuracy=0.9, mixed_accuracy=0.9, overflow_rate=0.0, speedup=0.8, min_speedup=1.1)
    assert fast[2].name == "speedup vs fp32" and not fast[2].passed
    assert not prod.judge(fp32_accuracy=0.9, mixed_accuracy=float("nan"), overflow_rate=0.0, speedup=1.0)[0].passed


@pytest.mark.parametrize("backend", BACKENDS)
def test_validate_reports_measured_runs(backend: str, digits: mpc.data.Dataset, storm: mpc.data.Dataset) -> None:
    rep = prod.validate(digits, backend=backend, precision="bf16", epochs=1, device="cpu")
    assert len(rep.fp32_history) == len(rep.mixed_history) == 23
    assert rep.fp32_history.meta["precision"] == "fp32" and rep.mixed_history.meta["precision"] == "bf16"
    assert rep.accuracy_diff == pytest.approx(100 * (rep.mixed_accuracy - rep.fp32_accuracy))
    assert rep.overflow_rate == rep.mixed_history.overflow_rate and rep.speedup > 0
    assert rep.passed == all(c.passed for c in rep.checks)
    lo, hi = rep.speedup_spread  # the p10-p90 range of the same step times the speedup comes from
    a = [r.seconds / r.samples for r in rep.fp32_history.records[5:]]
    b = [r.seconds / r.samples for r in rep.mixed_history.records[5:]]
    assert lo == pytest.approx(np.percentile(a, 10) / np.percentile(b, 90)) and lo <= rep.speedup <= hi
    assert rep.speedup_text == f"{rep.speedup:.2f}x (p10-p90 {lo:.2f}-{hi:.2f}x)"
    p, n = rep.fp32_accuracy, len(digits.y_test)
    assert rep.accuracy_stderr_points == pytest.approx(100 * np.sqrt(p * (1 - p) / n))
    bad = prod.validate(storm, backend=backend, precision="fp16", epochs=1, device="cpu")
    assert bad.overflow_rate == 1.0 and not bad.passed
    assert [r["result"] for r in bad.table()][1] == "FAIL"


# --- figures and imports -------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_production_figures_carry_the_data(storm: mpc.data.Dataset) -> None:
    from mpcourse import plots

    tr = prod.Trainer(
        "torch",
        "mlp",
        mpc.TrainConfig(precision="fp16"),
        storm,
        device="cpu",
        fallback=prod.FallbackPolicy(window=4, max_overflow_rate=0.5),
        schedule=prod.PrecisionSchedule.fp32_warmup(3),
        monitor=Monitor(window=4),
    )
    hist = tr.fit(steps=10)
    fig = plots.precision_timeline(hist, window=4)
    assert [d.name for d in fig.data] == [
        "loss in fp32",
        "loss in fp16",
        "loss in bf16",
        "overflow rate (4-step window)",
    ]
    assert list(fig.data[1].x) == [3, 4, 5, 6] and list(fig.data[2].x) == [7, 8, 9]
    assert fig.layout.title.text and fig.layout.xaxis2.title.text and fig.layout.yaxis.title.text
    dash = plots.monitor_dashboard(tr.monitor.rows)
    assert list(dash.data[1].y) == tr.monitor.column("overflow_rate")
    est = {
        "fp32": prod.estimate_memory(tr.engine, storm.x_train[:64], "fp32"),
        "fp16": prod.estimate_memory(tr.engine, storm.x_train[:64], "fp16"),
    }
    bars = plots.memory_bars(est)
    assert sum(d.y[1] for d in bars.data) == pytest.approx(est["fp16"].total / 2**20)


def test_production_imports_without_frameworks() -> None:
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'mlx'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from mpcourse import production\nfrom mpcourse.production import checkpoint, monitor\n"
        "assert 'torch' not in sys.modules and 'mlx' not in sys.modules\n"
        "print(production.FallbackPolicy().next_precision('fp16'))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "bf16", r.stderr


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_switch_precision_keeps_a_users_own_model(digits: mpc.data.Dataset) -> None:
    from torch import nn

    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    eng = mpc.make_engine("torch", net, mpc.TrainConfig(precision="fp16"), device="cpu", data=digits, verbose=False)
    eng.fit(digits, steps=3, progress=False)
    new = prod.switch_precision(eng, "fp32")
    assert new.model is net and new.model_name == "Sequential" and new.step == 3
    assert new.fit(digits, steps=2, progress=False).records[-1].step == 4
    pure = _engine("torch", digits, precision="bf16", master_weights=False)
    with pytest.raises(ValueError, match="needs fp32 master weights"):
        prod.switch_precision(pure, "fp32")


def test_monitor_overflow_alert_fires_once_per_crossing_and_rearms() -> None:
    mon = Monitor(window=4, memory=False, max_overflow_rate=0.25)
    pattern = [False, False, False, True, True, False, False, False, False, True, True, True]
    for i, inf in enumerate(pattern):
        mon.update(_rec(i, inf))
    # window 4: the rate passes 1/4 at step 4 (steps 1..4 hold two overflows), falls back to
    # 0 by step 8 (re-armed), passes again at step 10 (steps 7..10: two overflows).
    assert [(a["step"], a["kind"], a["window"]) for a in mon.alerts] == [
        (4, "overflow_rate", (1, 4)),
        (10, "overflow_rate", (7, 10)),
    ]
    assert mon.alerts[0]["value"] == 0.5 and mon.alerts[0]["threshold"] == 0.25
    assert mon.summary()["alerts"] == 2 and "2 alert(s)" in repr(mon)
    assert Monitor(window=4, memory=False).alerts == []  # no threshold, no overflow alert


def test_monitor_nan_alert_and_warnings() -> None:
    mon = Monitor(window=2, memory=False, warn=True)
    bad = dataclasses.replace(_rec(1, True), loss=float("nan"))
    mon.update(_rec(0, False))
    with pytest.warns(UserWarning, match="mpcourse monitor: nan"):
        mon.update(bad)
    mon.update(dataclasses.replace(bad, step=2))
    assert [(a["step"], a["kind"]) for a in mon.alerts] == [(1, "nan")]  # the first one only
    for bad_rate in (1.0, -0.1, True, "5%"):
        with pytest.raises(ValueError, match="max_overflow_rate must be None or a number"):
            Monitor(max_overflow_rate=bad_rate)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_long_run_grows_to_the_clamp_and_stays(digits: mpc.data.Dataset) -> None:
    from mpcourse.production import long_run

    cfg = long_run.rust_report_config()
    assert (cfg.precision, cfg.init_scale, cfg.growth_interval, cfg.min_scale, cfg.max_scale) == (
        "fp16", 65536.0, 2000, 1.0, 262144.0)  # fmt: skip
    # The same rule at a scale a unit test can run: growth every 5 steps, clamp 4x the start.
    small = long_run.rust_report_config(growth_interval=5, max_scale=4 * 65536.0)
    run = long_run.run(digits, small, steps=20, window=5)
    assert run.milestones() == [(0, 65536.0), (5, 131072.0), (10, 262144.0)]
    assert run.clamp_reached_at == 10 and max(run.history.scales) == 262144.0  # never past the clamp
    s = run.summary()
    assert s["steps"] == 20 and s["skipped_steps"] == 0 and s["alerts"] == [] and 0 <= s["accuracy"] <= 1
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        long_run.run(digits, small, steps=0)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_checklist_checks_what_code_can_and_marks_the_rest(digits: mpc.data.Dataset) -> None:
    from mpcourse.production.checklist import checklist, format_checklist

    eng = mpc.make_engine("torch", "mlp", mpc.TrainConfig(precision="fp16"), device="cpu", data=digits, verbose=False)
    items = {i.item: i for i in checklist(eng.fit(digits, steps=5, progress=False))}
    assert items["fp16 runs with a loss scaler"].status == "pass"
    assert items["fp32 master weights"].status == "pass"
    assert items["validated against fp32"].status == "yours"
    assert items["the checkpoint holds the scaler state"].status == "yours"
    bad = mpc.make_engine("torch", "mlp", mpc.TrainConfig(precision="fp16", loss_scale="none"), device="cpu",
                          data=digits, verbose=False).fit(digits, steps=3, progress=False)  # fmt: skip
    storm = mpc.History(records=[_rec(i, True) for i in range(4)], meta=dict(bad.meta))
    by = {i.item: i for i in checklist(storm)}
    assert by["fp16 runs with a loss scaler"].status == "fail" and by["overflow rate below 5%"].status == "fail"
    text = format_checklist(checklist(storm))
    assert text.count("[ ]") == 2 and "[?]" in text and "100.0% of 4 steps" in text
    with pytest.raises(ValueError, match="at least one step"):
        checklist(mpc.History())
    with pytest.raises(TypeError, match="mpcourse History"):
        checklist([1, 2])


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_fallback_goes_all_the_way_to_fp32_in_real_runs(digits: mpc.data.Dataset) -> None:
    # Inputs near fp32's own limit overflow in every precision: the chain runs to its end
    # (fp16 -> bf16 -> fp32), one recorded event per switch. A fallback is not a cure.
    huge = dataclasses.replace(digits, x_train=digits.x_train * 1e38, x_test=digits.x_test * 1e38)
    pol = prod.FallbackPolicy(window=5, max_overflow_rate=0.5)
    tr = prod.Trainer("torch", "mlp", mpc.TrainConfig(precision="fp16"), huge, device="cpu", fallback=pol)
    h = tr.fit(steps=15)
    assert [(e["step"], e["from"], e["to"]) for e in h.events] == [(5, "fp16", "bf16"), (10, "bf16", "fp32")]
    assert tr.engine.config.precision == "fp32"
    # Features in raw units (1e5) overflow only fp16: a chain straight to fp32 fixes them.
    raw = dataclasses.replace(digits, x_train=digits.x_train * 1e5, x_test=digits.x_test * 1e5)
    pol32 = prod.FallbackPolicy(window=5, max_overflow_rate=0.5, chain=("fp16", "fp32"))
    tr32 = prod.Trainer("torch", "mlp", mpc.TrainConfig(precision="fp16"), raw, device="cpu", fallback=pol32)
    h32 = tr32.fit(steps=12)
    assert [(e["from"], e["to"]) for e in h32.events] == [("fp16", "fp32")]
    assert not any(r.skipped for r in h32.records[h32.events[0]["step"] :])
