"""Your own model and your own data, on both engines: no sizes, any input shape, any targets with
your own loss, batch iterables, and bad values refused before any step (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest

import mpcourse as mpc
from mpcourse.engines import missing_reason

BACKENDS = [
    pytest.param(b, marks=pytest.mark.skipif(missing_reason(b) is not None, reason=str(missing_reason(b))))
    for b in ("torch", "mlx")
]


# --- small models of "your own", one per backend ------------------------------------------
def linear(backend: str, n_in: int, n_out: int):  # type: ignore[no-untyped-def]
    if backend == "torch":
        import torch

        torch.manual_seed(0)
        return torch.nn.Linear(n_in, n_out)
    import mlx.core as mx
    import mlx.nn as nn

    mx.random.seed(0)
    return nn.Linear(n_in, n_out)


def cnn(backend: str):  # type: ignore[no-untyped-def]
    """A conv net with BatchNorm that needs 4-D images: (n, 1, 8, 8) torch, (n, 8, 8, 1) MLX."""
    if backend == "torch":
        import torch
        from torch import nn

        torch.manual_seed(0)

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv, self.bn, self.head = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 10)

            def forward(self, x):  # type: ignore[no-untyped-def]
                assert x.ndim == 4, f"got {tuple(x.shape)}"
                return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))

        return Net()
    import mlx.core as mx
    import mlx.nn as nn

    mx.random.seed(0)

    class MNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn, self.head = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm(8), nn.Linear(8, 10)

        def __call__(self, x):  # type: ignore[no-untyped-def]
            assert x.ndim == 4, f"got {tuple(x.shape)}"
            return self.head(nn.relu(self.bn(self.conv(x))).mean(axis=(1, 2)))

    return MNet()


def tokens_model(backend: str, vocab: int = 16, dim: int = 8):  # type: ignore[no-untyped-def]
    """(n, T) token ids -> (n, T, vocab) logits."""
    if backend == "torch":
        import torch
        from torch import nn

        torch.manual_seed(0)
        return nn.Sequential(nn.Embedding(vocab, dim), nn.Linear(dim, vocab))
    import mlx.core as mx
    import mlx.nn as nn

    mx.random.seed(0)
    return nn.Sequential(nn.Embedding(vocab, dim), nn.Linear(dim, vocab))


def mse(backend: str):  # type: ignore[no-untyped-def]
    return lambda out, t: ((out - t) ** 2).mean()


def params(eng) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Every parameter and buffer (BatchNorm statistics included) as numpy copies."""
    if eng.backend == "torch":
        return {k: v.detach().cpu().numpy().copy() for k, v in eng.model.state_dict().items()}
    from mlx.utils import tree_flatten

    state = eng.state_dict()["framework"]
    return {**{f"m.{k}": np.array(v) for k, v in state["master"].items()}, **state["buffers"]} | {
        f"p.{k}": np.array(v) for k, v in tree_flatten(eng.model.parameters())
    }


def unchanged(eng, before) -> bool:  # type: ignore[no-untyped-def]
    after = params(eng)
    return set(after) == set(before) and all(np.array_equal(after[k], before[k]) for k in before)


def make(backend: str, model, **kw):  # type: ignore[no-untyped-def]
    cfg = kw.pop("config", mpc.TrainConfig(batch_size=32))
    return mpc.make_engine(backend, model, cfg, device="cpu", verbose=False, **kw)


RNG = np.random.default_rng(0)
X784 = RNG.random((128, 784), dtype=np.float32)
X64 = RNG.random((256, 64), dtype=np.float32)


# --- 1. user models need no sizes ---------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_user_model_of_any_width_trains_without_sizes(backend: str) -> None:
    eng = make(backend, linear(backend, 784, 10))
    hist = eng.fit((X784, np.arange(128) % 10), steps=4)
    assert len(hist) == 4 and np.isfinite(hist.losses).all()
    assert eng.num_features is None and eng.num_classes is None and eng.output_shape == (10,)
    wide = make(backend, linear(backend, 64, 20))  # 20 outputs: more than the zoo's 10 classes
    wide.fit((X64, np.arange(256) % 20), steps=2)
    res = wide.evaluate((X64, np.arange(256) % 20))
    assert set(res) == {"loss", "accuracy"} and 0.0 <= res["accuracy"] <= 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_past_the_real_output_width_are_refused_before_any_update(backend: str) -> None:
    # The issue's MLX case (it indexed out of bounds: a crashed interpreter or silent garbage).
    eng = make(backend, linear(backend, 64, 5))
    before = params(eng)
    for _ in range(2):
        with pytest.raises(
            ValueError, match=r"label 9 but the model has 5 outputs.*\[0, 5\).*give the model at least 10"
        ):
            eng.fit((X64, np.arange(256) % 10), steps=3)
    with pytest.raises(ValueError, match="label 9 but the model has 5"):
        eng.evaluate((X64, np.arange(256) % 10))
    assert eng.step == 0 and unchanged(eng, before)
    eng.fit((X64, np.arange(256) % 5), steps=1)  # labels that fit train
    with pytest.raises(ValueError, match="label 7 but the model has 5"):
        eng.train_step(X64[:8], np.full(8, 7))
    assert eng.step == 1


@pytest.mark.skipif(missing_reason("mlx") is not None, reason=str(missing_reason("mlx")))
def test_mlx_batch_gradients_refuses_labels_past_the_width() -> None:
    eng = make("mlx", linear("mlx", 64, 5))
    with pytest.raises(ValueError, match="label 9 but the model has 5"):
        eng.batch_gradients(X64[:16], np.full(16, 9))


@pytest.mark.parametrize("backend", BACKENDS)
def test_images_reach_a_user_cnn_unflattened_and_zoo_models_keep_their_shapes(backend: str, digits) -> None:
    imgs = digits.x_train[:128].reshape(-1, 1, 8, 8)
    if backend == "mlx":
        imgs = imgs.transpose(0, 2, 3, 1)  # MLX convolutions are channels-last
    eng = make(backend, cnn(backend))
    hist = eng.fit((imgs, digits.y_train[:128]), steps=3)
    assert len(hist) == 3 and np.isfinite(hist.losses).all()
    assert set(eng.evaluate((imgs, digits.y_train[:128]))) == {"loss", "accuracy"}
    zoo = make(backend, "mlp")  # the zoo's flat models view each sample as its 64 features
    zoo.fit((digits.x_train[:64].reshape(-1, 8, 8), digits.y_train[:64]), steps=1)
    with pytest.raises(ValueError, match="63 features but the model was built for 64"):
        zoo.fit((digits.x_train[:64, :63], digits.y_train[:64]), steps=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_ids_train_with_next_token_labels_and_bad_ids_are_refused(backend: str) -> None:
    ids = RNG.integers(0, 16, (64, 9))
    x, y = ids[:, :-1], ids[:, 1:]  # (n, T) inputs, (n, T) next-token labels for the default loss
    eng = make(backend, tokens_model(backend))
    hist = eng.fit((x, y), steps=3)
    assert np.isfinite(hist.losses).all() and eng.output_shape == (8, 16)
    res = eng.evaluate((x, y))
    assert set(res) == {"loss", "accuracy"}  # token accuracy: labels shaped like outputs[..., 0]
    before = params(eng)
    for bad, shown in ((16, "16"), (-1, "-1")):
        xb = x.copy()
        xb[3, 2] = bad
        with pytest.raises(ValueError, match=rf"token id {shown} but the model's largest embedding has 16 rows"):
            eng.fit((xb, y), steps=1)
    with pytest.raises(ValueError, match=r"labels of shape \(32, 3\) do not fit model outputs of shape \(32, 8, 16\)"):
        make(backend, tokens_model(backend)).fit((x, y[:, :3]), steps=1)
    assert eng.step == 3 and unchanged(eng, before)


# --- 2. targets and loss_fn ----------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_float_regression_targets_train_with_a_user_loss(backend: str) -> None:
    w = RNG.standard_normal((64, 1)).astype(np.float32)
    target = X64 @ w  # (n, 1) float targets
    eng = make(backend, linear(backend, 64, 1), loss_fn=mse(backend), config=mpc.TrainConfig(lr=1e-2))
    first = eng.evaluate((X64, target))
    hist = eng.fit((X64, target), epochs=20)
    res = eng.evaluate((X64, target))
    assert set(res) == {"loss"}  # no accuracy for regression targets
    assert res["loss"] < 0.5 * first["loss"] and hist.losses[-1] < hist.losses[0]  # it learns: 10.3 -> 4.1 measured


@pytest.mark.parametrize("backend", BACKENDS)
def test_next_token_targets_work_with_a_user_loss(backend: str) -> None:
    if backend == "torch":
        import torch.nn.functional as F

        def loss_fn(out, t):  # type: ignore[no-untyped-def]
            return F.cross_entropy(out.reshape(-1, out.shape[-1]), t.reshape(-1))
    else:
        import mlx.nn as nn

        def loss_fn(out, t):  # type: ignore[no-untyped-def]
            return nn.losses.cross_entropy(out, t, reduction="mean")

    ids = RNG.integers(0, 16, (64, 9))
    eng = make(backend, tokens_model(backend), loss_fn=loss_fn)
    eng.fit((ids[:, :-1], ids[:, 1:]), steps=2)
    assert set(eng.evaluate((ids[:, :-1], ids[:, 1:]))) == {"loss", "accuracy"}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kind, match",
    [
        ("vector", r"loss_fn must return a scalar \(a 0-d tensor\), but it returned shape \(32,\)"),
        ("float", r"loss_fn returned a Python number \(float"),
        ("raises", r"loss_fn\(outputs of shape \(32, 10\), targets of shape \(32,\)\) raised"),
    ],
)
def test_a_loss_fn_without_a_scalar_is_refused_on_the_first_step(backend: str, kind: str, match: str, digits) -> None:
    def loss_fn(out, t):  # type: ignore[no-untyped-def]
        per_sample = ((out - out.mean()) ** 2).mean(axis=1) if backend == "mlx" else ((out - out.mean()) ** 2).mean(1)
        if kind == "vector":
            return per_sample
        if kind == "float":
            return float(per_sample.mean().item())
        raise RuntimeError("shapes do not broadcast")

    imgs = digits.x_train[:128].reshape(-1, 1, 8, 8)
    if backend == "mlx":
        imgs = imgs.transpose(0, 2, 3, 1)
    eng = make(backend, cnn(backend), loss_fn=loss_fn, config=mpc.TrainConfig(precision="fp16", batch_size=32))
    before, scale = params(eng), eng.scale
    with pytest.raises(ValueError, match=match):
        eng.fit((imgs, digits.y_train[:128]), steps=2)
    with pytest.raises(ValueError, match=match.replace("32", "128")):
        eng.evaluate((imgs, digits.y_train[:128]))
    # BatchNorm's running statistics included: the refused step changed nothing.
    assert eng.step == 0 and unchanged(eng, before) and eng.scale == scale


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_values_are_refused_before_any_step(backend: str) -> None:
    eng = make(backend, linear(backend, 64, 10), config=mpc.TrainConfig(precision="fp16"))
    before, scale = params(eng), eng.scale
    y = np.arange(256) % 10
    for bs in (-1, 0, 1.5, True):
        with pytest.raises(ValueError, match=f"batch_size must be an int >= 1, got {bs!r}"):
            eng.evaluate((X64, y), batch_size=bs)
    with pytest.raises(ValueError, match=r"holds 9223372036854775808 \(dtype uint64\), past int64's range"):
        eng.fit((X64, np.full(256, 2**63, dtype=np.uint64)), steps=1)
    with pytest.raises(ValueError, match=r"x is complex \(complex64\).*x.real"):
        eng.fit((X64.astype(np.complex64), y), steps=1)
    with pytest.raises(ValueError, match="y must be real numbers"):
        eng.fit((X64, y.astype(np.complex128)), steps=1)
    with pytest.raises(ValueError, match="integer class labels for the default loss.*your own loss_fn"):
        eng.fit((X64, y + 0.5), steps=1)
    with pytest.raises(ValueError, match="NaN/inf"):
        eng.fit((X64.astype(np.float64) * 1e39, y), steps=1)  # past float32's range
    assert eng.step == 0 and unchanged(eng, before) and eng.scale == scale
    ok = eng.fit((X64, np.arange(256, dtype=np.uint64) % 10), steps=1)  # small uint64 labels are fine
    assert len(ok) == 1


# --- 3. data: arrays, loaders, generator functions ---------------------------------------
def batches_list(n_batches: int = 6, bs: int = 16) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [(rng.random((bs, 64), dtype=np.float32), rng.integers(0, 10, bs)) for _ in range(n_batches)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_list_and_a_generator_function_are_batches(backend: str) -> None:
    data = batches_list()
    a = make(backend, linear(backend, 64, 10))
    ha = a.fit(data, epochs=2)
    assert (
        len(ha) == 12 and list(ha.column("samples")) == [16] * 12 and (a.epoch, a.batch_in_epoch) == (1, 6)
    )  # as for arrays

    def gen():  # type: ignore[no-untyped-def]
        yield from data

    b = make(backend, linear(backend, 64, 10))
    hb = b.fit(gen, epochs=2)  # no len: until two passes end
    assert (b.epoch, b.batch_in_epoch) == (2, 0)
    assert np.array_equal(ha.losses, hb.losses)
    assert set(b.evaluate(gen)) == {"loss", "accuracy"}
    with pytest.raises(TypeError, match="an iterator .* can be read only once.*generator function itself"):
        b.fit(gen(), epochs=1)
    with pytest.raises(ValueError, match="yielded no batches"):
        b.fit([], epochs=1)
    with pytest.raises(TypeError, match=r"batch 0 is a dict, not an \(x, y\) pair"):
        b.fit([{"x": 1}], epochs=1)
    for kind in ({"x": X64}, X64, "text"):
        with pytest.raises(TypeError, match="data must be an mpcourse Dataset, an \\(x, y\\) pair"):
            b.fit(kind, epochs=1)


def seeded_stream(data: list) -> object:  # type: ignore[type-arg]
    """A re-iterable that shuffles its batches per epoch (set_epoch), like a seeded sampler."""

    class Stream:
        epoch = 0

        def set_epoch(self, e: int) -> None:
            self.epoch = e

        def __iter__(self):  # type: ignore[no-untyped-def]
            order = np.random.default_rng([7, self.epoch]).permutation(len(data))
            return iter([data[i] for i in order])

    return Stream()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["arrays", "list", "set_epoch"])
def test_resume_mid_epoch_is_exact_for_arrays_and_for_batches_fixed_per_epoch(backend: str, kind: str) -> None:
    data_list = batches_list()
    data = (X64, np.arange(256) % 10) if kind == "arrays" else data_list if kind == "list" else None
    cfg = mpc.TrainConfig(precision="fp16", batch_size=32)
    ref = make(backend, linear(backend, 64, 10), config=cfg)
    src = data if data is not None else seeded_stream(data_list)
    full = ref.fit(src, steps=17).losses  # crosses two epoch ends in every kind
    a = make(backend, linear(backend, 64, 10), config=cfg)
    first = a.fit(src, steps=9).losses
    b = make(backend, linear(backend, 64, 10), config=cfg)
    b.load_state_dict(a.state_dict())
    rest = b.fit(data if data is not None else seeded_stream(data_list), steps=8).losses  # a fresh loader
    assert np.array_equal(np.concatenate([first, rest]), full)


torch_only = pytest.mark.skipif(missing_reason("torch") is not None, reason=str(missing_reason("torch")))


@torch_only
def test_a_torch_dataloader_trains_and_resumes_exactly_with_a_seeded_sampler() -> None:
    import torch
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    ds = TensorDataset(torch.from_numpy(X64), torch.from_numpy(np.arange(256) % 10))

    def loader() -> DataLoader:  # type: ignore[type-arg]
        # One process, seeded: the engine calls sampler.set_epoch(epoch) before each pass.
        return DataLoader(ds, batch_size=48, sampler=DistributedSampler(ds, num_replicas=1, rank=0, seed=3))

    cfg = mpc.TrainConfig(precision="bf16")
    ref = make("torch", linear("torch", 64, 10), config=cfg)
    full = ref.fit(loader(), epochs=2)
    assert len(full) == 12 and list(full.column("samples"))[:6] == [48] * 5 + [16]  # the loader's own batches
    a = make("torch", linear("torch", 64, 10), config=cfg)
    first = a.fit(loader(), steps=8).losses
    b = make("torch", linear("torch", 64, 10), config=cfg)
    b.load_state_dict(a.state_dict())
    rest = b.fit(loader(), steps=4).losses
    assert np.array_equal(np.concatenate([first, rest]), full.losses)
    shuffled = DataLoader(ds, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(make("torch", linear("torch", 64, 10)).fit(shuffled, epochs=2)) == 8
    assert set(b.evaluate(DataLoader(ds, batch_size=100))) == {"loss", "accuracy"}


@pytest.mark.skipif(missing_reason("mlx") is not None, reason=str(missing_reason("mlx")))
def test_the_issues_mlx_crash_case_runs_to_a_clean_refusal_in_a_fresh_interpreter() -> None:
    # Before: rc 134/139 ("double free or corruption") or silent garbage. Now: a ValueError, rc 0.
    import subprocess
    import sys

    code = (
        "import numpy as np, mlx.nn, mpcourse as mpc\n"
        "x = np.random.default_rng(0).random((256, 64), dtype=np.float32); y = np.arange(256) % 10\n"
        "eng = mpc.make_engine('mlx', mlx.nn.Linear(64, 5), mpc.TrainConfig(), device='cpu', verbose=False)\n"
        "for _ in range(2):\n"
        "    try:\n"
        "        eng.fit((x, y), steps=3)\n"
        "    except ValueError as err:\n"
        "        print('refused:', err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("refused: train data has label 9 but the model has 5 outputs") == 2
