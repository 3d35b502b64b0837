"""Hypothesis property tests of the fused ops: random shapes, dtypes, layouts, budgets, boxes,
temperatures and weights; each example is compared with cwr_fast.reference and checked against the
op's invariants (Linf/L2 ball, [lo, hi] box, CE/margin gradient structure).

Examples per test: 250 (the "cwr_fast_ops" profile); CWR_FAST_HYPOTHESIS_EXAMPLES=N raises it,
e.g. CWR_FAST_HYPOTHESIS_EXAMPLES=5000 pytest tests/ops/test_ops_properties.py.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from conftest import devices
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from helpers.ops import (FLOAT_DTYPES, as_layout, compute_eps, generator, loss_tolerance,
                         projection_inputs, run_loss, run_projection, run_step, ulp)

pytestmark = pytest.mark.usefixtures("compiled_backend")

settings.register_profile(
    "cwr_fast_ops",
    max_examples=int(os.environ.get("CWR_FAST_HYPOTHESIS_EXAMPLES", "250")),
    deadline=None,  # the first example of a test pays for lazy initialisation
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,
)
PROFILE = settings.get_profile("cwr_fast_ops")

on_devices = pytest.mark.parametrize("device", devices())
STEP_LAYOUTS = ["contiguous", "channels_last", "transposed", "sliced", "batch_sliced"]
LOSS_LAYOUTS = ["contiguous", "transposed", "sliced", "batch_sliced"]


@st.composite
def step_cases(draw, l2: bool):
    n = draw(st.integers(0, 6))
    inner = draw(st.lists(st.integers(1, 9), min_size=0, max_size=3))
    lo = draw(st.floats(-1.0, 1.0, width=32))
    hi = lo + draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 2.0, width=32))
    eps_max, alpha_max = (3.0, 1.0) if l2 else (0.5, 0.25)
    return dict(
        shape=(n, *inner),
        dtype=draw(st.sampled_from(FLOAT_DTYPES)),
        layouts=tuple(draw(st.sampled_from(STEP_LAYOUTS)) for _ in range(3)),
        lo=lo, hi=hi,
        alpha=draw(st.sampled_from([0.0]) | st.floats(0.0, alpha_max)),
        eps=draw(st.sampled_from([0.0]) | st.floats(0.0, eps_max)),
        alpha_per_sample=draw(st.booleans()),
        eps_per_sample=draw(st.booleans()),
        grad_kind=draw(st.sampled_from(["normal", "sparse", "zero", "tiny", "huge"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def make_step(case, device):
    gen = generator(case["seed"])
    shape, dtype, lo, hi = case["shape"], case["dtype"], case["lo"], case["hi"]
    n = shape[0]
    f64 = dict(dtype=torch.float64)
    # x_nat in the box (up to its rounding to dtype, which the invariants' slack covers)
    x_nat = torch.rand(shape, generator=gen, **f64) * (hi - lo) + lo
    spread = 2 * case["eps"] + 0.1
    x_adv = x_nat + (torch.rand(shape, generator=gen, **f64) * 2 - 1) * spread
    g = torch.randn(shape, generator=gen, **f64)
    kind = case["grad_kind"]
    if kind == "sparse":
        g = torch.where(torch.rand(shape, generator=gen, **f64) < 0.7, torch.zeros_like(g), g)
    elif kind == "zero":
        g = torch.zeros_like(g)
    elif kind == "tiny":
        g = g * (1e-30 if dtype in (torch.float32, torch.float64) else 1e-4)
    elif kind == "huge":
        g = g * (1e30 if dtype in (torch.float32, torch.float64, torch.bfloat16) else 1e3)
    alpha, eps = case["alpha"], case["eps"]
    if case["alpha_per_sample"]:
        alpha = (torch.rand(n, generator=gen, **f64) * alpha).float().to(device)
    if case["eps_per_sample"]:
        eps = (torch.rand(n, generator=gen, **f64) * eps).float().to(device)
    x_adv, g, x_nat = (as_layout(t.to(dtype=dtype, device=device), lay)
                       for t, lay in zip((x_adv, g, x_nat), case["layouts"]))
    return x_adv, g, x_nat, alpha, eps


def per_sample_bound(v, n, device) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.to(device=device, dtype=torch.float64)
    return torch.full((n,), float(v), dtype=torch.float64, device=device)


def box_and_ball_slack(case, x_nat) -> float:
    """Rounding slack of an invariant: the output is rounded once to its dtype (<= 1 ulp at the
    largest magnitude involved) after a float32 computation."""
    dtype = case["dtype"]
    mag = max(abs(case["lo"]), abs(case["hi"]), 1.0) + case["eps"]
    return ulp(torch.tensor(mag), dtype).item() + 8 * compute_eps(dtype) * mag


@on_devices
@given(case=step_cases(l2=False))
@PROFILE
def test_linf_step_property(case, device):
    x_adv, g, x_nat, alpha, eps = make_step(case, device)
    run_step("linf", x_adv, g, x_nat, alpha, eps, case["lo"], case["hi"], what=str(case))
    if x_adv.numel() == 0:
        return
    slack = box_and_ball_slack(case, x_nat)
    x, xn = x_adv.double(), x_nat.double()
    e = per_sample_bound(eps, x.shape[0], device).reshape(-1, *[1] * (x.dim() - 1))
    dist = (x - xn).abs() - e
    assert dist.max().item() <= slack, f"Linf ball violated by {dist.max().item():.3g} > {slack:.3g}: {case}"
    assert x.min().item() >= case["lo"] - slack and x.max().item() <= case["hi"] + slack, \
        f"box [{case['lo']}, {case['hi']}] violated: [{x.min().item()}, {x.max().item()}] {case}"


@on_devices
@given(case=step_cases(l2=True))
@PROFILE
def test_l2_step_property(case, device):
    x_adv, g, x_nat, alpha, eps = make_step(case, device)
    run_step("l2", x_adv, g, x_nat, alpha, eps, case["lo"], case["hi"], what=str(case))
    if x_adv.numel() == 0:
        return
    n = x_adv.shape[0]
    d = max(1, x_adv[0].numel())
    slack = box_and_ball_slack(case, x_nat) * math.sqrt(d) + 64 * compute_eps(case["dtype"]) * case["eps"]
    norms = (x_adv.double() - x_nat.double()).reshape(n, -1).norm(dim=1)
    excess = norms - per_sample_bound(eps, n, device)
    assert excess.max().item() <= slack, f"L2 ball violated by {excess.max().item():.3g} > {slack:.3g}: {case}"
    x = x_adv.double()
    assert x.min().item() >= case["lo"] - slack and x.max().item() <= case["hi"] + slack, case


@st.composite
def loss_cases(draw, ce: bool):
    return dict(
        n=draw(st.integers(0, 9)),
        c=draw(st.integers(1, 40) | st.sampled_from([1000, 1003])),
        dtype=draw(st.sampled_from(FLOAT_DTYPES)),
        layout=draw(st.sampled_from(LOSS_LAYOUTS)),
        std=draw(st.sampled_from([0.0, 0.1, 1.0, 10.0, 100.0])),
        temperature=draw(st.sampled_from([1.0]) | st.floats(0.05, 50.0)) if ce else 1.0,
        weighted=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def make_loss(case, device):
    gen = generator(case["seed"])
    n, c = case["n"], case["c"]
    logits = torch.randn(n, c, generator=gen, dtype=torch.float64) * case["std"]
    if case["std"] >= 10 and n > 0:  # plenty of ties once rounded to float16/bfloat16
        logits = logits.round()
    target = torch.randint(0, c, (n,), generator=gen)
    weight = (torch.rand(n, generator=gen, dtype=torch.float64) * 2).float().to(device) \
        if case["weighted"] else None
    logits = as_layout(logits.to(dtype=case["dtype"], device=device), case["layout"])
    return logits, target.to(device), weight


@on_devices
@given(case=loss_cases(ce=True))
@PROFILE
def test_temperature_ce_property(case, device):
    logits, target, weight = make_loss(case, device)
    loss, dz = run_loss("ce", logits, target, case["temperature"], weight, what=str(case))
    if loss.numel() == 0:
        return
    # Structure: loss >= 0 and dz = w (softmax - onehot) / T, so rows sum to 0, dz_y <= 0 <= dz_j.
    w = weight.double() if weight is not None else torch.ones_like(loss, dtype=torch.float64)
    scale = (w.abs().max().item() + 1) / case["temperature"]
    elem_slack = ulp(torch.tensor(scale), case["dtype"]).item() + 16 * compute_eps(case["dtype"]) * scale
    loss_slack = loss_tolerance(logits, case["temperature"], weight)["atol"]
    assert loss.min().item() >= -loss_slack, f"negative loss {loss.min().item()}: {case}"
    d = dz.double()
    assert d.sum(dim=1).abs().max().item() <= case["c"] * elem_slack, f"dz rows do not sum to 0: {case}"
    rows = torch.arange(case["n"], device=device)
    assert (d[rows, target] <= elem_slack).all(), f"dz at the target > 0: {case}"
    others = d.clone()
    others[rows, target] = 0
    assert (others >= 0).all(), case


@on_devices
@given(case=loss_cases(ce=False))
@PROFILE
def test_margin_property(case, device):
    logits, target, weight = make_loss(case, device)
    loss, dz = run_loss("margin", logits, target, 1.0, weight, what=str(case))
    n, c = case["n"], case["c"]
    if n == 0:
        return
    w = weight.double() if weight is not None else torch.ones(n, dtype=torch.float64, device=device)
    d, z = dz.double(), logits.double()
    if c == 1:
        assert (loss == 0).all() and (d == 0).all(), case
        return
    rows = torch.arange(n, device=device)
    wd = w.to(dz.dtype).double()  # the weights as rounded into dz's dtype
    # Exactly -w at the target and +w at the first arg-max competitor (ties: the lowest index).
    others = z.clone()
    others[rows, target] = float("-inf")
    j = others.argmax(dim=1)  # first maximal index
    expected = torch.zeros_like(d)
    expected[rows, j] = wd
    expected[rows, target] = -wd
    assert torch.equal(d, expected), f"margin dz structure wrong: {case}"
    z_true = z[rows, target]
    margin = others.max(dim=1).values - z_true
    tol = 4 * compute_eps(case["dtype"]) * (z.abs().max().item() + 1) * (w.abs().max().item() + 1)
    assert (loss.double() - w * margin).abs().max().item() <= tol, case


@st.composite
def dlr_cases(draw):
    case = draw(loss_cases(ce=False))
    case["targeted"] = draw(st.booleans())
    case["c"] = max(case["c"], 4 if case["targeted"] else 3)
    return case


@on_devices
@given(case=dlr_cases())
@PROFILE
def test_dlr_property(case, device):
    logits, target, weight = make_loss(case, device)
    name = "dlr_t" if case["targeted"] else "dlr"
    loss, dz = run_loss(name, logits, target, 1.0, weight, what=str(case))
    if case["n"] == 0:
        return
    d = dz.double()
    # At most 4 (targeted: 5) nonzero entries per row, and rows sum to 0: d/dz of -N/D with N a
    # difference of two logits and D = z_pi1 - z_pi3 (- z_pi4 averaged in) both shift-invariant.
    assert ((d != 0).sum(dim=1) <= (5 if case["targeted"] else 4)).all(), case
    finite = d.isfinite().all(dim=1)
    scale = d.abs().amax(dim=1).clamp_min(1.0)
    slack = 8 * (ulp(scale, case["dtype"]) + compute_eps(case["dtype"]) * scale)
    assert (d.sum(dim=1).abs()[finite] <= slack[finite]).all(), f"DLR dz rows do not sum to 0: {case}"
    if not case["targeted"]:  # -(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3) >= -1 (for w >= 0)
        w = weight.double() if weight is not None else torch.ones_like(loss, dtype=torch.float64)
        bound = -w * (1 + 8 * compute_eps(case["dtype"]))
        assert (loss.double()[finite] >= bound[finite] - 1e-12).all(), f"DLR loss below -w: {case}"


@st.composite
def projection_cases(draw):
    return dict(m=draw(st.integers(0, 8)), d=draw(st.integers(0, 40) | st.sampled_from([784, 3072])),
                dtype=draw(st.sampled_from([torch.float32, torch.float64])),
                scale=draw(st.sampled_from([0.0, 0.01, 1.0, 100.0])),
                name=draw(st.sampled_from(["linf", "l2"])), seed=draw(st.integers(0, 2**31 - 1)))


@on_devices
@given(case=projection_cases())
@PROFILE
def test_projection_property(case, device):
    t, w, b = projection_inputs(case["m"], case["d"], case["dtype"], device, seed=case["seed"],
                                scale=case["scale"])
    d = run_projection(case["name"], t, w, b, what=str(case))
    if d.numel() == 0:
        return
    x = (t + d).double()
    assert x.min().item() >= -1e-6 and x.max().item() <= 1 + 1e-6, f"left the box: {case}"
    inactive = w == 0 if case["name"] == "linf" else w.abs() <= 1e-8
    assert (d[inactive] == 0).all(), f"moved a coordinate with w = 0: {case}"
