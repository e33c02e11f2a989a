"""LARS, parameter groups and the learning-rate schedule."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from vicreg.optim import (
    LARS,
    build_optimizer,
    param_groups,
    scaled_lr,
    set_lr,
    warmup_cosine,
)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4, bias=False))


def loss_of(model: nn.Module, step: int) -> torch.Tensor:
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(step))
    return model(x).square().mean()


def reference_lars(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    mus: list[torch.Tensor],
    lr: float,
    weight_decay: float,
    momentum: float,
    eta: float,
    clip_lr: bool = False,
) -> None:
    """The official update written out naively, in float64, one tensor at a time (Python branches).

    ``clip_lr``: the LARC rule, the layer's rate is min(eta * ||w|| / ||d||, lr) rather than lr times that.
    """
    for p, g, mu in zip(params, grads, mus, strict=True):
        d = g.double().clone()
        if p.ndim != 1:  # official exclude_bias_and_norm: p.ndim == 1 -> no decay, no adaptation
            d = d + weight_decay * p.double()
            w_norm = float(p.double().norm())
            d_norm = float(d.norm())
            if w_norm > 0 and d_norm > 0:
                local = eta * w_norm / d_norm
                if clip_lr and lr > 0:
                    local = min(local, lr) / lr
                d = d * local
        mu.copy_(momentum * mu + d)
        p.copy_(p.double() - lr * mu)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-6, 0.05])
def test_lars_matches_naive_official_update(weight_decay: float) -> None:
    model = tiny_model()  # has 2-D weights, 1-D Linear and BatchNorm biases, 1-D BatchNorm weights
    opt = LARS(model.parameters(), lr=0.0, weight_decay=weight_decay)
    ref = [p.detach().double().clone() for p in model.parameters()]
    mus = [torch.zeros_like(p) for p in ref]
    for step, lr in enumerate([0.0, 0.3, 1.0, 2.5, 0.7]):
        set_lr(opt, lr)
        opt.zero_grad()
        loss_of(model, step).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        reference_lars(ref, grads, mus, lr, weight_decay, 0.9, 0.001)
        for p, r in zip(model.parameters(), ref, strict=True):
            torch.testing.assert_close(p.double(), r, rtol=1e-5, atol=1e-7)
            r.copy_(p.detach().double())  # both continue from the same point despite float32 rounding
        for p, m in zip(model.parameters(), mus, strict=True):
            torch.testing.assert_close(opt.state[p]["mu"].double(), m, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("eta", [0.02, 50.0])  # 50: the layer rate exceeds lr and the clip bites
def test_lars_clip_lr_matches_naive_larc_update(eta: float) -> None:
    model = tiny_model()
    opt = LARS(model.parameters(), lr=0.0, weight_decay=1e-4, eta=eta, clip_lr=True)
    ref = [p.detach().double().clone() for p in model.parameters()]
    mus = [torch.zeros_like(p) for p in ref]
    for step, lr in enumerate([0.0, 0.3, 1.0, 0.05]):
        set_lr(opt, lr)
        opt.zero_grad()
        loss_of(model, step).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        reference_lars(ref, grads, mus, lr, 1e-4, 0.9, eta, clip_lr=True)
        for p, r in zip(model.parameters(), ref, strict=True):
            torch.testing.assert_close(p.double(), r, rtol=1e-5, atol=1e-7)
            r.copy_(p.detach().double())


def test_lars_clip_lr_caps_the_layer_rate_at_lr() -> None:
    w = nn.Parameter(torch.full((2, 2), 1.0))
    opt = LARS([w], lr=0.1, weight_decay=0.0, eta=1.0, clip_lr=True)
    w.grad = torch.full((2, 2), 0.01)  # eta * ||w|| / ||g|| = 100 > lr: clipped to lr, plain SGD
    opt.step()
    torch.testing.assert_close(w, torch.full((2, 2), 1.0 - 0.1 * 0.01))


def test_lars_excludes_1d_parameters_from_decay_and_trust_ratio() -> None:
    w = nn.Parameter(torch.full((3, 3), 2.0))
    b = nn.Parameter(torch.full((3,), 2.0))
    opt = LARS([w, b], lr=0.5, weight_decay=0.1, momentum=0.9, eta=0.001)
    w.grad = torch.zeros_like(w)
    b.grad = torch.zeros_like(b)
    opt.step()
    assert torch.equal(b, torch.full((3,), 2.0))  # no decay on the bias
    # w: g = wd * w; trust ratio eta * ||w|| / ||wd * w|| = eta / wd -> update lr * eta * w
    torch.testing.assert_close(w, torch.full((3, 3), 2.0 - 0.5 * 0.001 * 2.0))
    b.grad = torch.full((3,), 4.0)
    opt.step()  # plain SGD with momentum for the bias: mu = 0.9 * 0 + g
    torch.testing.assert_close(b, torch.full((3,), 2.0 - 0.5 * 4.0))


def test_lars_without_exclusion_adapts_every_tensor() -> None:
    b = nn.Parameter(torch.full((4,), 2.0))
    opt = LARS([b], lr=1.0, weight_decay=0.0, eta=0.01, exclude_bias_and_norm=False)
    b.grad = torch.full((4,), 100.0)
    opt.step()  # ||b|| / ||g|| = 0.02, times eta: the step is 0.01 * 0.02 * 100 = 0.02 per element
    torch.testing.assert_close(b, torch.full((4,), 1.98))


def test_lars_trust_ratio_is_one_for_zero_norms() -> None:
    zero_w = nn.Parameter(torch.zeros(2, 2))
    zero_g = nn.Parameter(torch.ones(2, 2))
    opt = LARS([zero_w, zero_g], lr=1.0, weight_decay=0.0)
    zero_w.grad = torch.full((2, 2), 3.0)  # ||w|| = 0 -> ratio 1: a plain step
    zero_g.grad = torch.zeros(2, 2)  # ||g|| = 0 -> ratio 1, no NaN
    opt.step()
    torch.testing.assert_close(zero_w, torch.full((2, 2), -3.0))
    torch.testing.assert_close(zero_g, torch.ones(2, 2))


def test_lars_step_has_no_host_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model()
    opt = LARS(model.parameters(), lr=0.1)
    loss_of(model, 0).backward()

    def sync(*_: object) -> None:
        raise AssertionError("LARS read a tensor value on the host")

    for method in ("item", "__bool__", "__float__", "__int__", "tolist"):
        monkeypatch.setattr(torch.Tensor, method, sync)
    opt.step()


def test_lars_leaves_grad_untouched_and_skips_params_without_grad() -> None:
    model = tiny_model()
    opt = LARS(model.parameters(), lr=0.1, weight_decay=0.5)
    loss_of(model, 0).backward()
    model[3].weight.grad = None
    frozen = model[3].weight.detach().clone()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    opt.step()
    assert torch.equal(model[3].weight, frozen) and model[3].weight not in opt.state
    for g, p in zip(grads, [p for p in model.parameters() if p.grad is not None], strict=True):
        assert torch.equal(g, p.grad)


def test_lars_resume_from_state_dict_is_exact() -> None:
    straight = tiny_model()
    opt = LARS(straight.parameters(), lr=0.5, weight_decay=1e-3)
    for step in range(4):
        opt.zero_grad()
        loss_of(straight, step).backward()
        opt.step()

    first = tiny_model()
    opt1 = LARS(first.parameters(), lr=0.5, weight_decay=1e-3)
    for step in range(2):
        opt1.zero_grad()
        loss_of(first, step).backward()
        opt1.step()
    resumed = copy.deepcopy(first)
    opt2 = LARS(resumed.parameters(), lr=0.0)
    opt2.load_state_dict(copy.deepcopy(opt1.state_dict()))
    assert opt2.param_groups[0]["lr"] == 0.5 and opt2.param_groups[0]["weight_decay"] == 1e-3
    for step in range(2, 4):
        opt2.zero_grad()
        loss_of(resumed, step).backward()
        opt2.step()
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_lars_closure_returns_loss() -> None:
    model = tiny_model()
    opt = LARS(model.parameters(), lr=0.1)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_of(model, 0)
        loss.backward()
        return loss

    before = loss_of(model, 0).detach()
    assert torch.equal(opt.step(closure), before)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -1.0}, "lr"),
        ({"lr": math.nan}, "lr"),
        ({"lr": 0.1, "weight_decay": -1e-6}, "weight_decay"),
        ({"lr": 0.1, "momentum": 1.0}, "momentum"),
        ({"lr": 0.1, "momentum": -0.1}, "momentum"),
        ({"lr": 0.1, "eta": math.inf}, "eta"),
    ],
)
def test_lars_argument_checks(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LARS(tiny_model().parameters(), **kwargs)


# ------------------------------------------------------------------------------------------- groups


def test_param_groups_split_biases_and_norms() -> None:
    model = tiny_model()
    model[0].bias.requires_grad_(False)
    groups = param_groups(model, weight_decay=0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert {id(p) for p in groups[0]["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in groups[1]["params"]} == {id(model[1].weight), id(model[1].bias)}
    only_weights = param_groups([model[0].weight], weight_decay=0.1)
    assert len(only_weights) == 1 and only_weights[0]["weight_decay"] == 0.1


@pytest.mark.parametrize(("name", "cls"), [("lars", LARS), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_build_optimizer(name: str, cls: type) -> None:
    model = tiny_model()
    opt = build_optimizer(name, model, lr=0.1, weight_decay=1e-4)
    assert type(opt) is cls
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(model.parameters()))
    if name != "lars":  # the decay exclusion is in the groups (LARS does it inside)
        assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    loss_of(model, 0).backward()
    opt.step()


def test_build_optimizer_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown optimizer 'adam'.*lars, adamw, sgd"):
        build_optimizer("adam", tiny_model(), lr=0.1, weight_decay=0.0)
    frozen = tiny_model().requires_grad_(False)
    for name in ("lars", "adamw"):
        with pytest.raises(ValueError, match="no trainable parameters"):
            build_optimizer(name, frozen, lr=0.1, weight_decay=0.0)


# ------------------------------------------------------------------------------------------- schedule


def official_adjust_learning_rate(step: int, max_steps: int, warmup_steps: int, base_lr: float) -> float:
    """The official per-step schedule, transcribed for comparison."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    step -= warmup_steps
    max_steps -= warmup_steps
    q = 0.5 * (1 + math.cos(math.pi * step / max_steps))
    end_lr = base_lr * 0.001
    return base_lr * q + end_lr * (1 - q)


def test_warmup_cosine_matches_official_on_every_step() -> None:
    total, warmup, peak = 120, 12, 1.6
    for step in range(total + 1):
        assert warmup_cosine(step, total, warmup, peak) == pytest.approx(
            official_adjust_learning_rate(step, total, warmup, peak), rel=1e-12, abs=1e-15
        )


def test_warmup_cosine_landmarks() -> None:
    total, warmup, peak = 100, 10, 2.0
    assert warmup_cosine(0, total, warmup, peak) == 0.0
    assert warmup_cosine(5, total, warmup, peak) == pytest.approx(1.0)
    assert warmup_cosine(warmup, total, warmup, peak) == pytest.approx(peak)
    assert warmup_cosine(55, total, warmup, peak) == pytest.approx((peak + 0.001 * peak) / 2)
    assert warmup_cosine(total, total, warmup, peak) == pytest.approx(0.001 * peak)
    assert warmup_cosine(total + 50, total, warmup, peak) == pytest.approx(0.001 * peak)
    assert warmup_cosine(0, total, 0, peak) == pytest.approx(peak)
    assert warmup_cosine(total, total, warmup, peak, final_ratio=0.0) == 0.0
    assert warmup_cosine(total - 1, total, total, peak) == pytest.approx(peak * (total - 1) / total)


@given(
    total=st.integers(1, 5000),
    warmup_frac=st.floats(0.0, 1.0),
    peak=st.floats(1e-6, 10.0),
    final_ratio=st.floats(0.0, 1.0),
)
def test_warmup_cosine_shape(total: int, warmup_frac: float, peak: float, final_ratio: float) -> None:
    warmup = int(warmup_frac * total)
    lrs = [warmup_cosine(s, total, warmup, peak, final_ratio) for s in range(total + 1)]
    assert all(final_ratio * peak * (1 - 1e-12) <= lr <= peak * (1 + 1e-12) for lr in lrs[warmup:])
    rising = lrs[: warmup + 1] if warmup < total else lrs[:warmup]  # warmup == total: never reaches the peak
    assert all(a <= b for a, b in itertools.pairwise(rising))
    assert all(a >= b - 1e-12 * peak for a, b in itertools.pairwise(lrs[warmup:]))  # then only decays


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 0, 0, 1.0), "total_steps"),
        ((0, 10, 11, 1.0), "warmup_steps"),
        ((0, 10, -1, 1.0), "warmup_steps"),
        ((-1, 10, 2, 1.0), "step"),
        ((0, 10, 2, -1.0), "peak_lr"),
        ((0, 10, 2, 1.0, 1.5), "final_ratio"),
        ((1.5, 10, 2, 1.0), "step"),
    ],
)
def test_warmup_cosine_argument_checks(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        warmup_cosine(*args)


def test_scaled_lr() -> None:
    assert scaled_lr(0.2, 2048) == pytest.approx(1.6)  # the paper's ImageNet setting
    assert scaled_lr(0.3, 256) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="batch_size"):
        scaled_lr(0.2, 0)
    with pytest.raises(ValueError, match="base_lr"):
        scaled_lr(-0.2, 256)


def test_set_lr_sets_every_group() -> None:
    opt = build_optimizer("sgd", tiny_model(), lr=0.1, weight_decay=1e-4)
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]
