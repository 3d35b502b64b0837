"""torch.library.opcheck on every torch.ops.cwr_fast op: schema (mutation and aliasing), fake
(meta) kernel against the real one, autograd registration and AOT dispatch, with and without the
optional per-sample tensors and weights, on contiguous and non-contiguous inputs."""

from __future__ import annotations

import pytest
import torch
from conftest import devices
from helpers.ops import (SQUARE_EPS, as_layout, budgets, loss_inputs, projection_inputs, square_accept_inputs,
                         square_query_inputs, step_inputs, weights)

pytestmark = pytest.mark.usefixtures("validating_backend")

on_devices = pytest.mark.parametrize("device", devices())


def step_samples(device):
    """(x_adv, grad, x_nat, alpha, eps, lo, hi, alpha_per_sample, eps_per_sample)."""
    x_adv, grad, x_nat = step_inputs((4, 3, 8, 8), torch.float32, device, seed=1)
    cl = [as_layout(t, "channels_last") for t in step_inputs((3, 3, 5, 5), torch.float16, device, seed=2)]
    empty = step_inputs((0, 3, 2, 2), torch.float32, device, seed=3)
    return {
        "scalars": (x_adv, grad, x_nat, 2 / 255, 8 / 255, 0.0, 1.0, None, None),
        "per_sample": (x_adv.clone(), grad, x_nat, 0.0, 0.0, 0.0, 1.0,
                       budgets(4, device, seed=1), budgets(4, device, seed=2)),
        "eps_per_sample_channels_last_f16": (*cl, 0.01, 0.0, -1.0, 1.0, None, budgets(3, device, seed=3)),
        "empty_batch": (*empty, 0.1, 0.2, 0.0, 1.0, None, None),
    }


def loss_samples(device, with_temperature: bool):
    logits, target = loss_inputs(6, 10, torch.float32, device, seed=4)
    wide, wide_target = loss_inputs(3, 1000, torch.bfloat16, device, seed=5)
    t = (2.0,) if with_temperature else ()
    return {
        "plain": (logits, target, *t, None),
        "weighted": (logits, target, *t, weights(6, device)),
        "requires_grad": (logits.clone().requires_grad_(True), target, *t, None),
        "requires_grad_weighted_transposed": (
            as_layout(logits, "transposed").requires_grad_(True), target, *t, weights(6, device, seed=3)),
        "c1000_bf16": (wide, wide_target, *t, None),
        "empty_batch": (logits[:0], target[:0], *t, None),
    }


def _opcheck(op, args):
    result = torch.library.opcheck(op, args)
    failures = {k: v for k, v in result.items() if v != "SUCCESS"}
    assert not failures, f"opcheck {op}: {failures}"


@on_devices
@pytest.mark.parametrize("sample", ["scalars", "per_sample", "eps_per_sample_channels_last_f16", "empty_batch"])
@pytest.mark.parametrize("name", ["linf_pgd_step_", "l2_pgd_step_"])
def test_opcheck_steps(name, sample, device):
    args = step_samples(device)[sample]
    _opcheck(getattr(torch.ops.cwr_fast, name).default, args)


@on_devices
@pytest.mark.parametrize("sample", ["plain", "weighted", "requires_grad", "requires_grad_weighted_transposed",
                                    "c1000_bf16", "empty_batch"])
@pytest.mark.parametrize("name", ["temperature_ce_fwd_bwd", "margin_loss_fwd_bwd"])
def test_opcheck_losses(name, sample, device):
    args = loss_samples(device, with_temperature=name == "temperature_ce_fwd_bwd")[sample]
    _opcheck(getattr(torch.ops.cwr_fast, name).default, args)


@on_devices
@pytest.mark.parametrize("sample", ["plain", "weighted", "requires_grad", "requires_grad_weighted_transposed",
                                    "c1000_bf16", "empty_batch"])
@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_opcheck_dlr(targeted, sample, device):
    logits, target, weight = loss_samples(device, with_temperature=False)[sample]
    toward = (target + 1) % logits.shape[1] if targeted else None
    _opcheck(torch.ops.cwr_fast.dlr_loss_fwd_bwd.default, (logits, target, toward, weight))


# (the mean over an empty batch is NaN, which opcheck's comparisons do not equate; test_ops_autograd
# checks that case against the reference)
DIFFERENTIABLE_SAMPLES = [(sample, reduction) for sample in
                          ["plain", "weighted", "requires_grad", "requires_grad_weighted_transposed",
                           "c1000_bf16", "empty_batch"]
                          for reduction in (0, 1, 2) if (sample, reduction) != ("empty_batch", 1)]


@on_devices
@pytest.mark.parametrize("sample, reduction", DIFFERENTIABLE_SAMPLES, ids=lambda v: str(v))
@pytest.mark.parametrize("name", ["temperature_cross_entropy", "margin_loss", "dlr_loss", "dlr_loss_targeted"])
def test_opcheck_differentiable_losses(name, sample, reduction, device):
    logits, target, *rest = loss_samples(device, with_temperature=name == "temperature_cross_entropy")[sample]
    if name.startswith("dlr"):
        toward = (target + 1) % logits.shape[1] if name.endswith("targeted") else None
        rest = [toward] + rest
    _opcheck(getattr(torch.ops.cwr_fast, name.removesuffix("_targeted")).default,
             (logits, target, *rest, reduction))


@on_devices
@pytest.mark.parametrize("sample", ["f32", "f64_far_planes", "transposed", "empty"])
@pytest.mark.parametrize("name", ["hyperplane_projection_linf", "hyperplane_projection_l2"])
def test_opcheck_projections(name, sample, device):
    t, w, b = projection_inputs(8, 50, torch.float64 if sample.startswith("f64") else torch.float32,
                                device, seed=6, scale=30.0 if "far" in sample else 1.0)
    if sample == "transposed":
        t, w = as_layout(t, "transposed"), as_layout(w, "transposed")
    if sample == "empty":
        t, w, b = t[:0], w[:0], b[:0]
    _opcheck(getattr(torch.ops.cwr_fast, name).default, (t, w, b))


def square_query_samples(device):
    """(x_nat, x_best, u, eps, side)."""
    x_nat, x_best, u = square_query_inputs((4, 3, 8, 8), torch.float32, device, seed=8)
    h_nat, h_best, h_u = square_query_inputs((3, 3, 5, 6), torch.float16, device, seed=9)
    return {
        "f32": (x_nat, x_best, u, SQUARE_EPS, 3),
        "channels_last_f16": (as_layout(h_nat, "channels_last"), as_layout(h_best, "channels_last"), h_u,
                              SQUARE_EPS, 2),
        "mixed_layouts_f64": (as_layout(x_nat.double(), "sliced"), as_layout(x_best.double(), "channels_last"),
                              u, SQUARE_EPS, 1),
        "full_window": (x_nat, x_best, u, SQUARE_EPS, 8),
        "empty_batch": (x_nat[:0], x_best[:0], u[:0], SQUARE_EPS, 3),
    }


def square_accept_samples(device):
    """(x_best, margin_best, x_new, logits, y)."""
    x_best, best, x_new, logits, y = square_accept_inputs((6, 3, 5, 5), 10, torch.float32, torch.float32,
                                                          device, seed=10)
    cl = square_accept_inputs((5, 3, 4, 4), 1000, torch.float16, torch.bfloat16, device, seed=11)
    return {
        "f32": (x_best, best, x_new, logits, y),
        "channels_last_f16_bf16_logits": (as_layout(cl[0], "channels_last"), *cl[1:]),
        "mixed_layouts_transposed_logits": (x_best, best, as_layout(x_new, "channels_last"),
                                            as_layout(logits, "transposed"), y),
        "single_class": square_accept_inputs((4, 1, 3, 3), 1, torch.float32, torch.float64, device, seed=12),
        "empty_batch": (x_best[:0], best[:0], x_new[:0], logits[:0], y[:0]),
    }


@on_devices
@pytest.mark.parametrize("sample", ["f32", "channels_last_f16", "mixed_layouts_f64", "full_window", "empty_batch"])
def test_opcheck_square_linf_query(sample, device):
    _opcheck(torch.ops.cwr_fast.square_linf_query.default, square_query_samples(device)[sample])


@on_devices
@pytest.mark.parametrize("sample", ["f32", "channels_last_f16_bf16_logits", "mixed_layouts_transposed_logits",
                                    "single_class", "empty_batch"])
def test_opcheck_square_accept_(sample, device):
    _opcheck(torch.ops.cwr_fast.square_accept_.default, square_accept_samples(device)[sample])


@on_devices
def test_fake_kernels_give_output_metadata(device):
    """Shapes and dtypes under FakeTensorMode, as torch.compile sees them."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        for dtype, loss_dtype in [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                  (torch.float16, torch.float32), (torch.float64, torch.float64)]:
            z = torch.empty(7, 13, dtype=dtype, device=device)
            y = torch.zeros(7, dtype=torch.long, device=device)
            for loss, dz in (torch.ops.cwr_fast.temperature_ce_fwd_bwd(z, y, 2.0, None),
                             torch.ops.cwr_fast.margin_loss_fwd_bwd(z, y, None),
                             torch.ops.cwr_fast.dlr_loss_fwd_bwd(z, y, None, None),
                             torch.ops.cwr_fast.dlr_loss_fwd_bwd(z, y, y + 1, None)):
                assert loss.shape == (7,) and loss.dtype == loss_dtype and loss.device.type == device
                assert dz.shape == (7, 13) and dz.dtype == dtype and dz.device.type == device
