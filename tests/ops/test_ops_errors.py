"""Bad input never crashes and never silently broadcasts: each case raises RuntimeError (TORCH_CHECK)
or ValueError/TypeError (Python wrappers) with a message that names the offending argument."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import devices

from cwr_fast import ops

pytestmark = pytest.mark.usefixtures("validating_backend")

on_devices = pytest.mark.parametrize("device", devices())
ERRORS = (RuntimeError, ValueError, TypeError)


def names(arg: str) -> str:
    """A regex matching the argument's name as a word (alpha does not match alpha_per_sample)."""
    return rf"(?<![A-Za-z0-9_]){arg}(?![A-Za-z0-9_])"


def step_args(device, n=4, dtype=torch.float32):
    x = torch.rand(n, 3, 4, 4, dtype=dtype, device=device)
    return x.clone(), torch.randn_like(x), x


STEP_CASES = {
    # case: (argument named in the message, function of the clean (x_adv, grad, x_nat) -> call args)
    "grad_shape": ("grad", lambda x, g, n: (x, g[:, :2], n, 0.1, 0.1)),
    "grad_broadcastable": ("grad", lambda x, g, n: (x, g[:1], n, 0.1, 0.1)),
    "x_nat_shape": ("x_nat", lambda x, g, n: (x, g, n.flatten(1), 0.1, 0.1)),
    "x_nat_broadcastable": ("x_nat", lambda x, g, n: (x, g, n[:, :, :1], 0.1, 0.1)),
    "integer_x_adv": ("x_adv", lambda x, g, n: ((x * 255).to(torch.uint8), g.to(torch.uint8), n.to(torch.uint8), 1, 8)),
    "int64_x_adv": ("x_adv", lambda x, g, n: (x.long(), g.long(), n.long(), 1, 8)),
    "bool_x_adv": ("x_adv", lambda x, g, n: (x > 0.5, g > 0, n > 0.5, 1, 8)),
    "integer_grad": ("grad", lambda x, g, n: (x, g.to(torch.int32), n, 0.1, 0.1)),
    "grad_dtype": ("grad", lambda x, g, n: (x, g.double(), n, 0.1, 0.1)),
    "x_nat_dtype": ("x_nat", lambda x, g, n: (x, g, n.half(), 0.1, 0.1)),
    "zero_dim_x_adv": ("x_adv", lambda x, g, n: (x[0, 0, 0, 0], g[0, 0, 0, 0], n[0, 0, 0, 0], 0.1, 0.1)),
    "negative_eps": ("eps", lambda x, g, n: (x, g, n, 0.1, -1e-3)),
    "nan_eps": ("eps", lambda x, g, n: (x, g, n, 0.1, math.nan)),
    "inf_eps": ("eps", lambda x, g, n: (x, g, n, 0.1, math.inf)),
    "negative_alpha": ("alpha", lambda x, g, n: (x, g, n, -0.1, 0.1)),
    "nan_alpha": ("alpha", lambda x, g, n: (x, g, n, math.nan, 0.1)),
    "lo_above_hi": ("lo", lambda x, g, n: (x, g, n, 0.1, 0.1, 1.0, 0.0)),
    "alpha_per_sample_too_long": ("alpha_per_sample", lambda x, g, n: (x, g, n, torch.full((5,), 0.1, device=x.device), 0.1)),
    "alpha_per_sample_too_short": ("alpha_per_sample", lambda x, g, n: (x, g, n, torch.full((1,), 0.1, device=x.device), 0.1)),
    "eps_per_sample_wrong_length": ("eps_per_sample", lambda x, g, n: (x, g, n, 0.1, torch.full((3,), 0.1, device=x.device))),
    "eps_per_sample_2d": ("eps_per_sample", lambda x, g, n: (x, g, n, 0.1, torch.full((4, 1), 0.1, device=x.device))),
    "eps_per_sample_integer": ("eps_per_sample", lambda x, g, n: (x, g, n, 0.1, torch.ones(4, dtype=torch.long, device=x.device))),
    "alpha_wrong_type": ("alpha", lambda x, g, n: (x, g, n, "0.1", 0.1)),
}
CPU_ONLY_STEP_CASES = {  # values of per-sample tensors are checked on the CPU only (no host sync)
    "negative_eps_per_sample": ("eps_per_sample", lambda x, g, n: (x, g, n, 0.1, torch.tensor([0.1, -0.1, 0.1, 0.1]))),
    "negative_alpha_per_sample": ("alpha_per_sample", lambda x, g, n: (x, g, n, torch.tensor([0.1, 0.1, 0.1, -1.0]), 0.1)),
    "inf_eps_per_sample": ("eps_per_sample", lambda x, g, n: (x, g, n, 0.1, torch.tensor([0.1, math.inf, 0.1, 0.1]))),
    "nan_alpha_per_sample": ("alpha_per_sample", lambda x, g, n: (x, g, n, torch.tensor([0.1, math.nan, 0.1, 0.1]), 0.1)),
}


@on_devices
@pytest.mark.parametrize("case", list(STEP_CASES) + list(CPU_ONLY_STEP_CASES))
@pytest.mark.parametrize("name", ["linf_pgd_step_", "l2_pgd_step_"])
def test_step_bad_input(name, case, device):
    if case in CPU_ONLY_STEP_CASES and device != "cpu":
        pytest.skip("per-sample values are validated on the CPU only")
    arg, make = {**STEP_CASES, **CPU_ONLY_STEP_CASES}[case]
    args = make(*step_args(device))
    before = args[0].clone() if isinstance(args[0], torch.Tensor) else None
    with pytest.raises(ERRORS, match=names(arg)):
        getattr(ops, name)(*args)
    if before is not None and before.dim() > 0:
        assert torch.equal(args[0], before), "x_adv was modified by a call that failed"


def loss_args(device, n=4, c=5):
    return torch.randn(n, c, device=device), torch.randint(0, c, (n,), device=device)


LOSS_CASES = {
    "logits_1d": ("logits", lambda z, y: (z[0], y[:1])),
    "logits_3d": ("logits", lambda z, y: (z[:, :, None], y)),
    "no_classes": ("logits", lambda z, y: (z[:, :0], y)),
    "integer_logits": ("logits", lambda z, y: (z.long(), y)),
    "target_int32": ("target", lambda z, y: (z, y.int())),
    "target_float": ("target", lambda z, y: (z, y.float())),
    "target_too_long": ("target", lambda z, y: (z, torch.cat([y, y]))),
    "target_too_short": ("target", lambda z, y: (z, y[:1])),
    "target_2d": ("target", lambda z, y: (z, y[:, None])),
    "weight_wrong_length": ("weight", lambda z, y: (z, y, torch.ones(3, device=z.device))),
    "weight_scalar": ("weight", lambda z, y: (z, y, torch.ones((), device=z.device))),
    "weight_integer": ("weight", lambda z, y: (z, y, torch.ones(4, dtype=torch.long, device=z.device))),
}
CPU_ONLY_LOSS_CASES = {  # on the GPU the kernel asserts instead (which would poison the context)
    "target_negative": ("target", lambda z, y: (z, torch.tensor([0, -1, 2, 3]))),
    "target_equal_to_C": ("target", lambda z, y: (z, torch.tensor([0, 1, 5, 3]))),
    "target_huge": ("target", lambda z, y: (z, torch.tensor([0, 1, 2, 2**40]))),
    "weight_negative": ("weight", lambda z, y: (z, y, torch.tensor([1.0, -1.0, 1.0, 1.0]))),
    "weight_nan": ("weight", lambda z, y: (z, y, torch.tensor([1.0, math.nan, 1.0, 1.0]))),
    "weight_inf": ("weight", lambda z, y: (z, y, torch.tensor([1.0, math.inf, 1.0, 1.0]))),
}


def call_loss(name, args, temperature=1.0):
    z, y, *w = args
    w = w[0] if w else None
    if name == "ce":
        return ops.temperature_ce_fwd_bwd(z, y, temperature, w)
    if name == "margin":
        return ops.margin_loss_fwd_bwd(z, y, w)
    toward = (y + 1) % z.shape[1] if name == "dlr_t" and z.dim() == 2 and z.shape[1] else None
    if name == "dlr_t" and toward is None:
        toward = torch.zeros_like(y)
    return ops.dlr_loss_fwd_bwd(z, y, toward, w)


LOSS_NAMES = ["ce", "margin", "dlr", "dlr_t"]


@on_devices
@pytest.mark.parametrize("case", list(LOSS_CASES) + list(CPU_ONLY_LOSS_CASES))
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_bad_input(name, case, device):
    if case in CPU_ONLY_LOSS_CASES and device != "cpu":
        pytest.skip("target values are validated on the CPU only")
    arg, make = {**LOSS_CASES, **CPU_ONLY_LOSS_CASES}[case]
    with pytest.raises(ERRORS, match=names(arg)):
        call_loss(name, make(*loss_args(device)))


DLR_CASES = {
    # case: (argument named in the message, targeted, function of (logits [4, 5], target) -> args)
    "two_classes": ("logits", False, lambda z, y: (z[:, :2], y % 2, None)),
    "three_classes_targeted": ("logits", True, lambda z, y: (z[:, :3], y % 3, (y + 1) % 3)),
    "attack_target_int32": ("attack_target", True, lambda z, y: (z, y, y.int())),
    "attack_target_float": ("attack_target", True, lambda z, y: (z, y, y.float())),
    "attack_target_wrong_length": ("attack_target", True, lambda z, y: (z, y, y[:3])),
    "attack_target_2d": ("attack_target", True, lambda z, y: (z, y, y[:, None])),
}
CPU_ONLY_DLR_CASES = {
    "attack_target_negative": ("attack_target", True, lambda z, y: (z, y, torch.tensor([0, 1, -1, 2]))),
    "attack_target_equal_to_C": ("attack_target", True, lambda z, y: (z, y, torch.tensor([5, 1, 0, 2]))),
}


@on_devices
@pytest.mark.parametrize("case", list(DLR_CASES) + list(CPU_ONLY_DLR_CASES))
def test_dlr_bad_input(case, device):
    if case in CPU_ONLY_DLR_CASES and device != "cpu":
        pytest.skip("target values are validated on the CPU only")
    arg, _, make = {**DLR_CASES, **CPU_ONLY_DLR_CASES}[case]
    z, y = loss_args(device)
    with pytest.raises(ERRORS, match=names(arg)):
        ops.dlr_loss_fwd_bwd(*make(z, y))
    if arg == "logits":  # the differentiable loss and the reference say the same
        with pytest.raises(ERRORS, match=names(arg)):
            ops.dlr_loss(*make(z, y))


@on_devices
@pytest.mark.parametrize("temperature", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_bad_temperature(temperature, device):
    with pytest.raises(ERRORS, match=names("temperature")):
        call_loss("ce", loss_args(device), temperature)
    with pytest.raises(ERRORS, match=names("temperature")):
        ops.temperature_cross_entropy(*loss_args(device), temperature)


# ---- tensors on different devices ----------------------------------------------------------------
# On a CPU-only machine the second device is 'meta'; with a GPU, CPU and CUDA are mixed as well.

OTHER_DEVICES = [("cpu", "meta"), pytest.param(("cuda", "cpu"), marks=pytest.mark.cuda, id="cuda-cpu"),
                 pytest.param(("cpu", "cuda"), marks=pytest.mark.cuda, id="cpu-cuda")]


@pytest.mark.parametrize("devs", OTHER_DEVICES, ids=lambda d: "-".join(d) if isinstance(d, tuple) else d)
@pytest.mark.parametrize("arg", ["grad", "x_nat", "alpha_per_sample", "eps_per_sample"])
@pytest.mark.parametrize("name", ["linf_pgd_step_", "l2_pgd_step_"])
def test_step_tensors_on_different_devices(name, arg, devs):
    home, other = devs
    x_adv, grad, x_nat = step_args(home)
    a_ps = torch.full((4,), 0.01, device=home)
    e_ps = torch.full((4,), 0.03, device=home)
    moved = {"grad": grad, "x_nat": x_nat, "alpha_per_sample": a_ps, "eps_per_sample": e_ps}
    moved[arg] = moved[arg].to(other)
    before = x_adv.clone()
    with pytest.raises(ERRORS, match=names(arg)):
        getattr(ops, name)(x_adv, moved["grad"], moved["x_nat"], moved["alpha_per_sample"],
                           moved["eps_per_sample"])
    assert torch.equal(x_adv, before)


@pytest.mark.parametrize("devs", OTHER_DEVICES, ids=lambda d: "-".join(d) if isinstance(d, tuple) else d)
@pytest.mark.parametrize("arg", ["target", "weight"])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_tensors_on_different_devices(name, arg, devs):
    home, other = devs
    z, y = loss_args(home)
    w = torch.ones(4, device=home)
    if arg == "target":
        y = y.to(other)
    else:
        w = w.to(other)
    with pytest.raises(ERRORS, match=names(arg)):
        call_loss(name, (z, y, w))


@pytest.mark.parametrize("devs", OTHER_DEVICES, ids=lambda d: "-".join(d) if isinstance(d, tuple) else d)
def test_dlr_attack_target_on_another_device(devs):
    home, other = devs
    z, y = loss_args(home)
    with pytest.raises(ERRORS, match=names("attack_target")):
        ops.dlr_loss_fwd_bwd(z, y, ((y + 1) % 5).to(other))


def projection_args(device, m=4, d=6, dtype=torch.float32):
    t = torch.rand(m, d, dtype=dtype, device=device)
    return t, torch.randn_like(t), torch.randn(m, dtype=dtype, device=device)


PROJECTION_CASES = {
    "points_1d": ("points", lambda t, w, b: (t[0], w[0], b[:1])),
    "points_3d": ("points", lambda t, w, b: (t[:, :, None], w[:, :, None], b)),
    "points_half": ("points", lambda t, w, b: (t.half(), w.half(), b.half())),
    "points_int": ("points", lambda t, w, b: ((t * 10).long(), (w * 10).long(), b.long())),
    "w_shape": ("w", lambda t, w, b: (t, w[:, :3], b)),
    "w_broadcastable": ("w", lambda t, w, b: (t, w[:1], b)),
    "w_dtype": ("w", lambda t, w, b: (t, w.double(), b)),
    "b_shape": ("b", lambda t, w, b: (t, w, b[:2])),
    "b_2d": ("b", lambda t, w, b: (t, w, b[:, None])),
    "b_dtype": ("b", lambda t, w, b: (t, w, b.double())),
}


@on_devices
@pytest.mark.parametrize("case", list(PROJECTION_CASES))
@pytest.mark.parametrize("name", ["hyperplane_projection_linf", "hyperplane_projection_l2"])
def test_projection_bad_input(name, case, device):
    arg, make = PROJECTION_CASES[case]
    with pytest.raises(ERRORS, match=names(arg)):
        getattr(ops, name)(*make(*projection_args(device)))


@pytest.mark.parametrize("devs", OTHER_DEVICES, ids=lambda d: "-".join(d) if isinstance(d, tuple) else d)
@pytest.mark.parametrize("arg", ["w", "b"])
@pytest.mark.parametrize("name", ["hyperplane_projection_linf", "hyperplane_projection_l2"])
def test_projection_tensors_on_different_devices(name, arg, devs):
    home, other = devs
    t, w, b = projection_args(home)
    if arg == "w":
        w = w.to(other)
    else:
        b = b.to(other)
    with pytest.raises(ERRORS, match=names(arg)):
        getattr(ops, name)(t, w, b)
