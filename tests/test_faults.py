"""Nothing lost, nothing misapplied (issue 14): checkpoint directories, state loaders and the
production CLI under bad input and faults. Each case of the issue has a test here; the property
tests (hypothesis) are in tests/test_faults_properties.py."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import struct
import warnings
from pathlib import Path
from typing import Any

import pytest

import mpcourse as mpc
from mpcourse import production as prod
from mpcourse.engines.portable import array_leaves, export_state
from mpcourse.production.checkpoint import (
    CheckpointError,
    CheckpointManager,
    dataset_record,
    load_checkpoint,
    read_checkpoint,
    run_identity,
    save_checkpoint,
)
from mpcourse.production.ckpt_format import PREFIX_SIZE
from mpcourse.production.cli import main as train_main
from mpcourse.scaler import DynamicLossScaler, NoOpLossScaler, StaticLossScaler

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_MLX = importlib.util.find_spec("mlx") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
BACKENDS = [
    pytest.param("torch", marks=needs_torch),
    pytest.param("mlx", marks=pytest.mark.skipif(not HAS_MLX, reason="mlx is not installed")),
]


def _engine(backend: str, digits: mpc.data.Dataset, **cfg: Any) -> mpc.engines.Engine:
    return mpc.make_engine(backend, "mlp", mpc.TrainConfig(**cfg), device="cpu", data=digits, verbose=False)


def _snapshot(engine: Any) -> dict[str, bytes]:
    """Every array and counter of an engine's state, as bytes (to prove a refused load changed nothing)."""
    state = export_state(engine)
    state.pop("rng")
    out = {k: v.tobytes() for k, v in array_leaves(state).items()}
    out["scaler"] = json.dumps(state["framework"]["scaler"], sort_keys=True, default=repr).encode()
    out["counters"] = repr((engine.step, engine.epoch, engine.batch_in_epoch, engine.scale)).encode()
    return out


def _tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# --- the checkpoint directory ----------------------------------------------------------------------
@needs_torch
def test_save_never_removes_the_file_it_wrote(tmp_path: Path) -> None:
    # The example: a higher-numbered file made the new one "the oldest" and pruned it.
    eng = mpc.make_engine("torch", "mlp", mpc.TrainConfig(), device="cpu", verbose=False)
    mgr = CheckpointManager(tmp_path / "run", every=1, keep=1)
    eng.step = 900
    mgr.save(eng)
    eng.step = 5
    p = mgr.save(eng)
    assert p.exists() and mgr.paths() == [p] and mgr.latest() == p  # newest written, not highest step
    assert read_checkpoint(p).meta["step"] == 5


@needs_torch
def test_pruning_keeps_this_runs_newest_valid_files_and_leaves_the_rest(tmp_path: Path) -> None:
    eng = mpc.make_engine("torch", "mlp", mpc.TrainConfig(), device="cpu", verbose=False)
    other = mpc.make_engine("torch", "mlp", mpc.TrainConfig(lr=0.01), device="cpu", verbose=False)
    mgr_other = CheckpointManager(tmp_path, every=1, keep=5)
    other.step = 40
    theirs = mgr_other.save(other)
    (tmp_path / "ckpt_00000090.mpck").write_bytes(b"MPCKPT\x00\x02 garbage, a damaged file")
    mgr = CheckpointManager(tmp_path, every=1, keep=2)
    written = []
    for step in (10, 20, 30, 40):  # step 40 collides with the other run's file name
        eng.step = step
        written.append(mgr.save(eng))
    assert theirs.exists() and read_checkpoint(theirs).meta["config"]["lr"] == 0.01  # not overwritten
    assert written[-1].name == f"ckpt_00000040.{mgr.run['id'][:8]}.mpck"  # type: ignore[index]
    assert (tmp_path / "ckpt_00000090.mpck").exists()  # a damaged file is never deleted...
    found = mgr.scan()
    assert [p for p, _ in found.valid] == [written[-1], written[-2]]  # ...nor counts towards keep
    assert not written[0].exists() and not written[1].exists()
    reasons = dict(found.skipped)
    assert "another run's checkpoint: config.lr: 0.01 in the checkpoint, 0.001 here" in reasons[theirs]
    assert (
        "ckpt_00000090.mpck is truncated: 32 bytes, shorter than the 88-byte prefix"
        in reasons[tmp_path / "ckpt_00000090.mpck"]
    )


@needs_torch
def test_a_manager_belongs_to_one_run(tmp_path: Path) -> None:
    a = run_identity("torch", "mlp", mpc.TrainConfig().to_dict(), None)
    b = run_identity("torch", "mlp", mpc.TrainConfig(seed=1).to_dict(), None)
    mgr = CheckpointManager(tmp_path, run=a)
    mgr.bind(a)  # the same run again is fine
    with pytest.raises(ValueError, match="config.seed: 0 in the checkpoint, 1 here"):
        mgr.bind(b)
    with pytest.raises(ValueError, match="prefix must be a plain file name part"):
        CheckpointManager(tmp_path, prefix="a/b")


def test_stale_tmp_files_are_removed_on_the_next_start(tmp_path: Path) -> None:
    (tmp_path / ".ckpt_00000010.mpck.k3j2.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".final.mpck.x1.tmp").write_bytes(b"half a final checkpoint")
    (tmp_path / "notes.tmp").write_text("not ours")
    mgr = CheckpointManager(tmp_path)
    assert (tmp_path / ".ckpt_00000010.mpck.k3j2.tmp").exists()  # building a manager touches nothing
    assert [p.name for p in mgr.remove_stale_tmp()] == [".ckpt_00000010.mpck.k3j2.tmp", ".final.mpck.x1.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp"]


@needs_torch
def test_first_save_removes_stale_tmp(tmp_path: Path) -> None:
    (tmp_path / ".ckpt_00000005.mpck.abc.tmp").write_bytes(b"left by a SIGKILL")
    eng = mpc.make_engine("torch", "mlp", mpc.TrainConfig(), device="cpu", verbose=False)
    eng.step = 10
    CheckpointManager(tmp_path, every=10).save(eng)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_00000010.mpck"]


# --- the file format: every byte after the magic is checked ------------------------------------------
@pytest.fixture(scope="module")
def one_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    if not HAS_TORCH:
        pytest.skip("torch is not installed")
    eng = mpc.make_engine("torch", "mlp", mpc.TrainConfig(precision="fp16"), device="cpu", verbose=False)
    return save_checkpoint(tmp_path_factory.mktemp("one") / "a.mpck", eng).read_bytes()


@pytest.mark.parametrize(
    "offset, match",
    [
        (8, "truncated or its prefix is damaged: its length fields say"),  # header_len
        (16, "truncated or its prefix is damaged: its length fields say"),  # payload_len
        (30, "corrupt: its length fields or header fail their sha256 checksum"),  # the head digest
        (60, "corrupt: its sha256 checksum does not match"),  # the file digest
        (PREFIX_SIZE + 3, "corrupt: its length fields or header fail their sha256 checksum"),  # the JSON header
        (-1, "corrupt: its sha256 checksum does not match"),  # the payload's last byte
    ],
)
def test_a_damaged_prefix_header_or_payload_is_a_checkpoint_error(
    one_file: bytes, tmp_path: Path, offset: int, match: str
) -> None:
    bad = bytearray(one_file)
    bad[offset] ^= 0x01  # a length field changed by one: on main, json.JSONDecodeError and --resume crashed
    path = tmp_path / "ckpt_00000001.mpck"
    path.write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match=match) as err:
        read_checkpoint(path)
    assert str(path) in str(err.value)
    with pytest.warns(UserWarning, match="skipping a checkpoint"):
        assert CheckpointManager(tmp_path).latest() is None  # skipped, not a crash


@pytest.mark.parametrize("shift", [1, 7])
def test_length_fields_that_still_add_up_are_caught(one_file: bytes, tmp_path: Path, shift: int) -> None:
    # On main: json.JSONDecodeError / UnicodeDecodeError, so latest() did not skip it and --resume crashed.
    hl, pl = struct.unpack_from("<QQ", one_file, 8)
    bad = bytearray(one_file)
    struct.pack_into("<QQ", bad, 8, hl + shift, pl - shift)  # the header boundary moves, the size does not
    path = tmp_path / "ckpt_00000002.mpck"
    path.write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match="corrupt: its length fields or header fail their sha256 checksum"):
        read_checkpoint(path)
    with pytest.warns(UserWarning, match="ckpt_00000002.mpck is corrupt"):
        assert CheckpointManager(tmp_path).latest() is None


@pytest.mark.parametrize("size", [0, 5, 8, 40, PREFIX_SIZE - 1])
def test_a_file_cut_inside_the_prefix_says_truncated(one_file: bytes, tmp_path: Path, size: int) -> None:
    path = tmp_path / "short.mpck"
    path.write_bytes(one_file[:size])
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and ("truncated" in msg or "empty" in msg) and "version" not in msg


def test_an_old_format_file_names_its_version(one_file: bytes, tmp_path: Path) -> None:
    path = tmp_path / "v1.mpck"
    path.write_bytes(b"MPCKPT\x00\x01" + one_file[8:])
    with pytest.raises(CheckpointError, match=r"format version b'\\x00\\x01' is not supported"):
        read_checkpoint(path)


# --- resume checks the dataset -------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_on_other_data_is_refused(backend: str, digits: mpc.data.Dataset, tmp_path: Path) -> None:
    eng = _engine(backend, digits)
    eng.fit(digits, steps=2, progress=False)
    path = save_checkpoint(tmp_path / "a.mpck", eng, data=digits)
    assert read_checkpoint(path).meta["dataset"] == dataset_record(digits)
    shifted = dataclasses.replace(digits, x_train=digits.x_train + 1.0)  # same name and shapes, other bytes
    other = _engine(backend, digits)
    before = _snapshot(other)
    with pytest.raises(CheckpointError, match=r"dataset\.sha256: '[0-9a-f]{64}' in the checkpoint"):
        load_checkpoint(path, other, data=shifted)
    under = mpc.data.load("underflow", seed=0)
    with pytest.raises(CheckpointError, match=r"dataset\.name: 'digits' in the checkpoint, 'underflow'"):
        load_checkpoint(path, other, data=under)
    no_record = save_checkpoint(tmp_path / "b.mpck", eng)
    with pytest.raises(CheckpointError, match="records none"):
        load_checkpoint(no_record, other, data=digits)
    assert _snapshot(other) == before
    load_checkpoint(path, other, data=digits)
    assert other.step == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_trainer_resume_skips_other_runs_and_reports_why(
    backend: str, digits: mpc.data.Dataset, tmp_path: Path
) -> None:
    cfg = mpc.TrainConfig(precision="fp16")
    a = prod.Trainer(backend, "mlp", cfg, digits, device="cpu", checkpoints=CheckpointManager(tmp_path, every=2))
    a.fit(steps=4)
    shifted = dataclasses.replace(digits, x_train=digits.x_train * 0.5)
    b = prod.Trainer(backend, "mlp", cfg, shifted, device="cpu")
    with pytest.warns(UserWarning, match="another run's checkpoint: dataset.sha256"):
        with pytest.raises(CheckpointError, match="no valid checkpoint of this run"):
            b.resume(tmp_path)
    assert b.engine.step == 0 and len(b.resume_skipped) == 2
    (tmp_path / "ckpt_00000004.mpck").write_bytes(b"")  # the newest one of the right run is damaged
    c = prod.Trainer(backend, "mlp", cfg, digits, device="cpu")
    with pytest.warns(UserWarning, match="ckpt_00000004.mpck is empty"):
        assert c.resume(tmp_path).meta["step"] == 2
    assert [p.name for p, _ in c.resume_skipped] == ["ckpt_00000004.mpck"]


# --- state loaders ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [math.nan, 0.0, math.inf, -4.0, "x", True])
def test_engine_refuses_a_bad_loss_scale_and_stays_as_it_was(backend: str, bad: Any, digits: mpc.data.Dataset) -> None:
    eng = _engine(backend, digits, precision="fp16")
    eng.fit(digits, steps=2, progress=False)
    st = eng.state_dict()
    st["framework"]["scaler"]["scale"] = bad
    before = _snapshot(eng)
    with pytest.raises((ValueError, TypeError), match="scaler state_dict: 'scale' must be a finite number > 0"):
        eng.load_state_dict(st)
    assert _snapshot(eng) == before


@needs_torch
@pytest.mark.parametrize(
    "key, bad, match",
    [
        ("_growth_tracker", 2000, r"'_growth_tracker' must be an int in \[0, 1999\]"),
        ("_growth_tracker", -1, "'_growth_tracker' must be an int"),
        ("_growth_tracker", 1.5, "'_growth_tracker' must be an int"),
        ("growth_interval", 0, "'growth_interval' must be an int >= 1"),
        ("growth_factor", 0.5, "growth_factor must be > 1"),
        ("backoff_factor", 2.0, r"backoff_factor must be in \(0, 1\)"),
        ("extra", 1, r"unknown keys \['extra'\]"),
    ],
)
def test_torch_grad_scaler_state_is_checked(key: str, bad: Any, match: str, digits: mpc.data.Dataset) -> None:
    eng = _engine("torch", digits, precision="fp16")
    st = eng.state_dict()
    assert st["framework"]["scaler"]["kind"] == "grad_scaler"
    st["framework"]["scaler"][key] = bad
    before = _snapshot(eng)
    with pytest.raises((ValueError, TypeError), match=match):
        eng.load_state_dict(st)
    assert _snapshot(eng) == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_engine_state_without_framework_parts_names_the_missing_key(backend: str, digits: mpc.data.Dataset) -> None:
    eng = _engine(backend, digits, precision="fp16")
    st = eng.state_dict()
    before = _snapshot(eng)
    with pytest.raises(ValueError, match=r"'framework' is missing keys \[.*'scaler'\]"):
        eng.load_state_dict({**st, "framework": {}})  # on main: KeyError: 'scaler'
    for key, value, match in [
        ("step", -1, "'step' must be an int >= 0"),
        ("epoch", 1.5, "'epoch' must be an int >= 0"),
        ("batch_in_epoch", None, "'batch_in_epoch' must be an int >= 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            eng.load_state_dict({**st, key: value})
    without = dict(st)
    del without["step"]
    with pytest.raises(ValueError, match=r"missing keys \['step'\]"):
        eng.load_state_dict(without)
    assert _snapshot(eng) == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_part_refused_late_is_rolled_back(backend: str, digits: mpc.data.Dataset) -> None:
    # The scaler is checked after the model (torch) or alongside it (MLX): either way nothing sticks.
    eng = _engine(backend, digits, precision="fp16", loss_scale=128.0)
    eng.fit(digits, steps=1, progress=False)
    donor = _engine(backend, digits, precision="fp16", loss_scale=128.0, seed=7)
    donor.fit(digits, steps=3, progress=False)
    st = donor.state_dict()
    st["framework"]["scaler"]["total_skipped"] = 99  # more skips than steps
    before = _snapshot(eng)
    with pytest.raises(ValueError, match="'total_skipped' must be an int in"):
        eng.load_state_dict(st)
    assert _snapshot(eng) == before


@pytest.mark.parametrize(
    "key, bad, match",
    [
        ("growth_tracker", 50, r"'growth_tracker' must be an int in \[0, 2\]"),  # interval 3: never grows again
        ("growth_tracker", "x", "'growth_tracker' must be an int"),
        ("growth_tracker", True, "'growth_tracker' must be an int"),
        ("growth_tracker", 1.5, "'growth_tracker' must be an int"),
        ("growth_tracker", -1, "'growth_tracker' must be an int"),
        ("scale", 2.0**30, r"'scale' must be within \[min_scale, max_scale\]"),
        ("scale", 0.5, r"'scale' must be within \[min_scale, max_scale\]"),
        ("scale", math.nan, "'scale' must be a finite number > 0"),
        ("hysteresis_left", 0, r"'hysteresis_left' must be an int in \[1, 2\]"),
        ("hysteresis_left", 3, r"'hysteresis_left' must be an int in \[1, 2\]"),
        ("total_steps", None, "'total_steps' must be an int >= 0"),
        ("total_steps", 10.0, "'total_steps' must be an int >= 0"),
        ("total_skipped", 11, r"'total_skipped' must be an int in \[0, 10\]"),
        ("consecutive_skipped", 5, r"'consecutive_skipped' must be an int in \[0, 4\]"),
        ("growth_interval", 0, "growth_interval must be an int >= 1"),
        ("min_scale", 2.0**12, r"min_scale .* must be <= max_scale"),
        ("surprise", 1, r"unknown keys \['surprise'\]"),
    ],
)
def test_dynamic_scaler_refuses_inconsistent_states_naming_the_key(key: str, bad: Any, match: str) -> None:
    s = DynamicLossScaler(init_scale=8.0, growth_interval=3, hysteresis=2, min_scale=1.0, max_scale=2.0**10)
    for v in [False, True, False, False, True, True, False, True, False, False]:
        s.update(v)
    assert (s.total_steps, s.total_skipped) == (10, 4)
    good = s.state_dict()
    with pytest.raises((ValueError, TypeError), match=match):
        s.load_state_dict({**good, key: bad})
    assert s.state_dict() == good  # a refused load changes nothing


def test_dynamic_scaler_refuses_counters_that_contradict_each_other() -> None:
    s = DynamicLossScaler(growth_interval=5, hysteresis=3)
    good = s.state_dict()
    with pytest.raises(ValueError, match="'growth_tracker' .* counts more finite steps"):
        s.load_state_dict({**good, "growth_tracker": 2})  # two finite steps in a run of none
    with pytest.raises(ValueError, match="cannot both be > 0"):
        s.load_state_dict({**good, "growth_tracker": 1, "total_steps": 3, "total_skipped": 1, "consecutive_skipped": 1})
    with pytest.raises(ValueError, match="says 2 overflows were tolerated"):
        s.load_state_dict({**good, "hysteresis_left": 1})
    assert s.state_dict() == good


@pytest.mark.parametrize(
    "key, bad, match",
    [
        ("scale", -4.0, "'scale' must be a finite number > 0"),
        ("total_steps", -1, "'total_steps' must be an int >= 0"),
        ("total_skipped", 5, r"'total_skipped' must be an int in \[0, 2\]"),
        ("consecutive_skipped", False, "'consecutive_skipped' must be an int"),
        ("growth_tracker", 0, r"unknown keys \['growth_tracker'\]"),
    ],
)
def test_static_scaler_refuses_bad_states_naming_the_key(key: str, bad: Any, match: str) -> None:
    s = StaticLossScaler(64.0)
    s.update(True)
    s.update(False)
    good = s.state_dict()
    with pytest.raises((ValueError, TypeError), match=match):
        s.load_state_dict({**good, key: bad})
    assert s.state_dict() == good


def test_noop_scaler_refuses_extra_keys() -> None:
    with pytest.raises(ValueError, match=r"unknown keys \['scale'\]"):
        NoOpLossScaler().load_state_dict({"kind": "none", "scale": 2.0})
    with pytest.raises(ValueError, match="missing keys"):
        mpc.scaler.scaler_from_state_dict({"kind": "static"})


# --- pure half with Adam ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_pure_fp16_adam_warns_and_reports_its_nan_step(backend: str, digits: mpc.data.Dataset) -> None:
    cfg = mpc.TrainConfig(precision="fp16", master_weights=False, loss_scale=1024.0)
    with pytest.warns(UserWarning, match="eps=1e-8 rounds to 0 in fp16"):
        eng = mpc.make_engine(backend, "mlp", cfg, device="cpu", data=digits, verbose=False)
    first = eng.fit(digits, steps=1, progress=False).records[0]
    # Finite gradients, NaN weights: the step is applied (kept, since it is taught) and reported.
    assert math.isfinite(first.grad_norm) and first.found_inf and not first.skipped
    for ok in (
        mpc.TrainConfig(precision="fp16", master_weights=False, optimizer="sgd"),
        mpc.TrainConfig(precision="bf16", master_weights=False),
        mpc.TrainConfig(precision="fp16"),
    ):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rec = mpc.make_engine(backend, "mlp", ok, device="cpu", data=digits, verbose=False).train_step(
                digits.x_train[:64], digits.y_train[:64]
            )
        assert not any("eps=1e-8" in str(w.message) for w in caught)
        assert not rec.found_inf


# --- python -m mpcourse.production train -----------------------------------------------------------
BAD_FLAGS = [
    (["--steps", "-5"], "--steps", "'-5'", "an int >= 1"),
    (["--steps", "0"], "--steps", "'0'", "an int >= 1"),
    (["--every", "0"], "--every", "'0'", "an int >= 1"),
    (["--keep", "0"], "--keep", "'0'", "an int >= 1"),
    (["--device", "tpu"], "--device", "'tpu'", "auto, cpu, cuda, cuda:N, mps"),
    (["--dataset", "nope"], "--dataset", "'nope'", "'digits'"),
    (["--lr", "-1"], "--lr", "'-1'", "a finite number > 0"),
    (["--lr", "nan"], "--lr", "'nan'", "a finite number > 0"),
    (["--seed", "-3"], "--seed", "'-3'", "an int >= 0"),
    (["--throttle", "-1"], "--throttle", "'-1'", "a finite number >= 0"),
    (["--batch-size", "0"], "--batch-size", "'0'", "an int >= 1"),
    (["--backend", "jax"], "--backend", "'jax'", "'torch', 'mlx'"),
]


@pytest.mark.parametrize("argv, flag, value, allowed", BAD_FLAGS, ids=[" ".join(a[0]) for a in BAD_FLAGS])
def test_every_bad_flag_exits_2_with_one_line_and_writes_nothing(
    argv: list[str], flag: str, value: str, allowed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert train_main(["train", "--dir", str(run), *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert f"argument {flag}" in err and value in err and allowed in err
    assert not run.exists()


@needs_torch
def test_refused_resume_exits_2_and_touches_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    base = ["train", "--dir", str(run), "--steps", "4", "--every", "2"]
    assert train_main(base) == 0
    capsys.readouterr()
    (run / ".ckpt_00000006.mpck.zz.tmp").write_bytes(b"stale")
    before = _tree(run)
    for extra, why in [
        (["--lr", "0.01"], "config.lr: 0.001 in the checkpoint, 0.01 here"),  # on main: a traceback, exit 1
        (["--dataset", "underflow"], "dataset.name: 'digits' in the checkpoint, 'underflow' here"),
        (["--seed", "1"], "config.seed: 0 in the checkpoint, 1 here"),
    ]:
        assert train_main([*base, "--resume", *extra]) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1, err
        assert "argument --resume: no valid checkpoint of this run" in err and why in err
        assert "--allow-fresh-start" in err
        assert _tree(run) == before  # nothing written, nothing removed (not even the stale tmp)


@needs_torch
def test_resume_with_every_checkpoint_damaged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    base = ["train", "--dir", str(run), "--steps", "4", "--every", "2", "--keep", "2"]
    assert train_main(base) == 0
    capsys.readouterr()
    for p in run.glob("ckpt_*.mpck"):
        p.write_bytes(p.read_bytes()[:-10])
    before = _tree(run)
    # On main: resumed_from null, a fresh start with only a Python warning.
    assert train_main([*base, "--resume"]) == 2
    _, err = capsys.readouterr()
    assert "no valid checkpoint of this run" in err and "ckpt_00000004.mpck is truncated" in err
    assert _tree(run) == before
    assert train_main([*base, "--steps", "6", "--resume", "--allow-fresh-start"]) == 0
    out, err = capsys.readouterr()
    info = json.loads(out.strip().splitlines()[-1])
    assert info["resumed_from"] is None and info["fresh_start"] and len(info["skipped"]) == 2
    assert "resume: skipped" in err and "starting from step 0" in err
    # The new checkpoints are kept, not pruned in favour of the damaged ones.
    mgr = CheckpointManager(run, run=read_checkpoint(run / "final.mpck").meta["run"])
    assert [read_checkpoint(p).meta["step"] for p, _ in mgr.scan().valid] == [6, 4]


@needs_torch
def test_resume_reports_the_files_it_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    base = ["train", "--dir", str(run), "--steps", "4", "--every", "2"]
    assert train_main(base) == 0
    (run / "ckpt_00000004.mpck").write_bytes(b"MPCKPT\x00\x02")
    (run / ".ckpt_00000006.mpck.q.tmp").write_bytes(b"stale")
    capsys.readouterr()
    assert train_main([*base, "--steps", "6", "--resume"]) == 0
    out, err = capsys.readouterr()
    info = json.loads(out.strip().splitlines()[-1])
    assert info["resumed_from"] == 2 and info["step"] == 6
    assert info["skipped"] == [
        f"{run / 'ckpt_00000004.mpck'} is truncated: 8 bytes, shorter than the 88-byte prefix; "
        "use an earlier checkpoint"
    ]
    assert info["removed_tmp"] == [".ckpt_00000006.mpck.q.tmp"]
    assert "resume: skipped" in err and "ckpt_00000004.mpck" in err
