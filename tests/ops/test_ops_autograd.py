"""Autograd and torch.compile: gradcheck of the differentiable losses in float64 (every reduction,
with and without weights), the non-differentiable dz output, the errors for trained weights, and a
torch.compile(fullgraph=True) PGD loop built on the ops that matches eager."""

from __future__ import annotations

import pytest
import torch
from conftest import devices, forced_reference_backend
from helpers.ops import assert_close_ulp, loss_inputs, weights

from cwr_fast import ops, reference

pytestmark = pytest.mark.usefixtures("compiled_backend")

on_devices = pytest.mark.parametrize("device", devices())
REDUCTIONS = ["mean", "sum", "none"]


@on_devices
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("shape", [(4, 5), (3, 1), (2, 40)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_gradcheck_temperature_cross_entropy(temperature, shape, weighted, reduction, device):
    logits, target = loss_inputs(*shape, torch.float64, device, seed=shape[1])
    logits.requires_grad_(True)
    w = weights(shape[0], device, dtype=torch.float64) if weighted else None
    fn = lambda z: ops.temperature_cross_entropy(z, target, temperature, w, reduction)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits,))


@on_devices
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("shape", [(4, 5), (3, 1), (2, 40)], ids=lambda s: "x".join(map(str, s)))
def test_gradcheck_margin_loss(shape, weighted, reduction, device):
    # Random float64 logits: the arg-max competitor is unique and at least ~1e-3 ahead, far above
    # gradcheck's finite-difference step (1e-6), so the piecewise-linear loss is smooth there.
    logits, target = loss_inputs(*shape, torch.float64, device, seed=shape[1] + 1)
    logits.requires_grad_(True)
    w = weights(shape[0], device, dtype=torch.float64) if weighted else None
    fn = lambda z: ops.margin_loss(z, target, w, reduction)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits,))


@on_devices
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("shape", [(4, 5), (3, 4), (2, 40)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_gradcheck_dlr_loss(targeted, shape, weighted, reduction, device):
    # Random float64 logits: the order of the top logits is stable under gradcheck's 1e-6 steps.
    logits, target = loss_inputs(*shape, torch.float64, device, seed=shape[1] + 2)
    logits.requires_grad_(True)
    w = weights(shape[0], device, dtype=torch.float64) if weighted else None
    toward = (target + 1) % shape[1] if targeted else None
    fn = lambda z: ops.dlr_loss(z, target, toward, w, reduction)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits,))


def differentiable_losses(name, target, w):
    """(fused, reference) differentiable versions of loss `name` on logits z."""
    toward = (target + 3) % 10
    return {
        "ce": (lambda z: ops.temperature_cross_entropy(z, target, 2.0, w),
               lambda z: reference.temperature_cross_entropy(z, target, 2.0, w)),
        "margin": (lambda z: ops.margin_loss(z, target, w), lambda z: reference.margin_loss(z, target, w)),
        "dlr": (lambda z: ops.dlr_loss(z, target, None, w), lambda z: reference.dlr_loss(z, target, None, w)),
        "dlr_t": (lambda z: ops.dlr_loss(z, target, toward, w),
                  lambda z: reference.dlr_loss(z, target, toward, w)),
    }[name]


@on_devices
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("name", ["ce", "margin", "dlr", "dlr_t"])
def test_loss_grad_matches_reference(name, dtype, device):
    """Backward through the fused loss (low precision too) equals the reference's autograd."""
    logits, target = loss_inputs(16, 10, dtype, device, seed=5)
    w = weights(16, device)
    z1 = logits.clone().requires_grad_(True)
    z2 = logits.clone().requires_grad_(True)
    fused, ref = differentiable_losses(name, target, w)
    fused(z1).backward()
    ref(z2).backward()
    assert z1.grad.dtype == dtype
    # mean over N: |grad| <= |w| / (N T); one ulp of the dtype plus float32 rounding (DLR: of its
    # terms 1/D and N/D^2, which exceed 1 where the denominator D is small)
    scale = 1.0 if name in ("ce", "margin") else z2.grad.abs().max().item()
    assert_close_ulp(z1.grad, z2.grad, what=f"{name} backward", ulps=1, rtol=1e-5, atol=1e-6 * scale)


@on_devices
@pytest.mark.parametrize("name", ["ce", "margin", "dlr", "dlr_t"])
def test_dz_output_is_not_differentiable(name, device):
    logits, target = loss_inputs(5, 7, torch.float64, device, seed=6)
    logits.requires_grad_(True)
    if name == "ce":
        loss, dz = ops.temperature_ce_fwd_bwd(logits, target, 1.5)
    elif name == "margin":
        loss, dz = ops.margin_loss_fwd_bwd(logits, target)
    else:
        loss, dz = ops.dlr_loss_fwd_bwd(logits, target, (target + 1) % 7 if name == "dlr_t" else None)
    assert loss.requires_grad and not dz.requires_grad
    (g,) = torch.autograd.grad(loss.sum(), logits, retain_graph=True)
    assert torch.allclose(g, dz, rtol=1e-12, atol=1e-12)
    # the attack's use: the upstream gradient dz flows into the logits as is
    loss2 = (loss * torch.arange(5, dtype=loss.dtype, device=device)).sum()
    (g2,) = torch.autograd.grad(loss2, logits)
    assert torch.allclose(g2, dz * torch.arange(5, dtype=dz.dtype, device=device)[:, None])


def _loss_call(name, logits, target, **kwargs):
    if name == "ce":
        return lambda: ops.temperature_cross_entropy(logits, target, 1.0, **kwargs)
    if name == "margin":
        return lambda: ops.margin_loss(logits, target, **kwargs)
    return lambda: ops.dlr_loss(logits, target, None, **kwargs)


@on_devices
@pytest.mark.parametrize("name", ["ce", "margin", "dlr"])
def test_weight_requiring_grad_is_an_error(name, device):
    logits, target = loss_inputs(4, 3, torch.float32, device)
    w = weights(4, device).requires_grad_(True)
    with pytest.raises(ValueError, match=r"\bweight\b"):
        _loss_call(name, logits, target, weight=w)()


@on_devices
@pytest.mark.parametrize("name", ["ce", "margin", "dlr"])
def test_bad_reduction_is_an_error(name, device):
    logits, target = loss_inputs(4, 3, torch.float32, device)
    with pytest.raises(ValueError, match=r"\breduction\b"):
        _loss_call(name, logits, target, reduction="avg")()


# ---- torch.compile -------------------------------------------------------------------------------

class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def pgd_attacks(model, x_nat, y, steps: int = 5):
    """Linf PGD on temperature CE and L2 PGD on the margin loss, both on the fused ops."""
    x_linf, x_l2 = x_nat.clone(), x_nat.clone()
    for _ in range(steps):
        x = x_linf.detach().requires_grad_(True)
        logits = model(x)
        _, dz = ops.temperature_ce_fwd_bwd(logits, y, 2.0)
        (g,) = torch.autograd.grad(logits, x, dz)
        ops.linf_pgd_step_(x_linf, g, x_nat, 2 / 255, 8 / 255)

        x = x_l2.detach().requires_grad_(True)
        logits = model(x)
        _, dz = ops.margin_loss_fwd_bwd(logits, y)
        (g,) = torch.autograd.grad(logits, x, dz)
        ops.l2_pgd_step_(x_l2, g, x_nat, 0.1, 0.5)
    return x_linf, x_l2


@on_devices
def test_compiled_pgd_loop_matches_eager(device, monkeypatch):
    import torch._dynamo
    from torch._dynamo.testing import CompileCounterWithBackend

    # torch.autograd.grad inside the compiled region needs Dynamo to trace autograd ops
    monkeypatch.setattr(torch._dynamo.config, "trace_autograd_ops", True)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TinyNet().to(device)
    gen = torch.Generator().manual_seed(1)
    x_nat = torch.rand(8, 3, 8, 8, generator=gen).to(device)
    y = torch.randint(0, 10, (8,), generator=gen).to(device)

    eager = pgd_attacks(model, x_nat, y)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(pgd_attacks, backend=counter, fullgraph=True)(model, x_nat, y)
    torch._dynamo.reset()

    assert counter.frame_count == 1, f"expected one graph, got {counter.frame_count}"
    if not forced_reference_backend():
        code = counter.graphs[0].code
        for op in ("temperature_ce_fwd_bwd", "margin_loss_fwd_bwd", "linf_pgd_step_", "l2_pgd_step_"):
            assert f"cwr_fast.{op}" in code, f"torch.ops.cwr_fast.{op} is not in the compiled graph"
    for name, a, b in zip(("linf", "l2"), compiled, eager):
        assert not torch.equal(b, x_nat), f"{name}: the eager attack did not move"
        assert_close_ulp(a, b, what=f"compiled vs eager {name} PGD", ulps=0, atol=1e-5)


@on_devices
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", ["ce", "margin", "dlr", "dlr_t"])
def test_repeated_and_scaled_backward(name, reduction, device):
    """The backward that hands dz over untouched (upstream gradient 1) stays right when the graph
    is kept and run again, and when the upstream gradient is not 1."""
    logits, target = loss_inputs(12, 10, torch.float32, device, seed=8)
    w = weights(12, device)
    toward = (target + 3) % 10
    fused = {
        "ce": lambda z: ops.temperature_cross_entropy(z, target, 2.0, w, reduction),
        "margin": lambda z: ops.margin_loss(z, target, w, reduction),
        "dlr": lambda z: ops.dlr_loss(z, target, None, w, reduction),
        "dlr_t": lambda z: ops.dlr_loss(z, target, toward, w, reduction),
    }[name]
    z = logits.clone().requires_grad_(True)
    (once,) = torch.autograd.grad(fused(z), z)
    loss = fused(z)
    loss.backward(retain_graph=True)
    loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(z.grad, 3 * once)
    (scaled,) = torch.autograd.grad(fused(z) * 2.5, z)
    torch.testing.assert_close(scaled, 2.5 * once)
    assert not torch.equal(once, torch.zeros_like(once))


@on_devices
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ["ce", "margin", "dlr", "dlr_t"])
def test_empty_batch(name, reduction, device):
    """No samples: an empty 'none', a 0 'sum' and a NaN 'mean', as the reference (torch) gives."""
    logits, target = loss_inputs(0, 10, torch.float32, device)
    z1, z2 = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    kwargs = {"ce": (2.0,), "margin": (), "dlr": (None,), "dlr_t": ((target + 3) % 10,)}[name]
    op = {"ce": ops.temperature_cross_entropy, "margin": ops.margin_loss, "dlr": ops.dlr_loss,
          "dlr_t": ops.dlr_loss}[name]
    rop = {"ce": reference.temperature_cross_entropy, "margin": reference.margin_loss,
           "dlr": reference.dlr_loss, "dlr_t": reference.dlr_loss}[name]
    a = op(z1, target, *kwargs, None, reduction)
    b = rop(z2, target, *kwargs, None, reduction)
    torch.testing.assert_close(a, b, equal_nan=True)


# ---- the PGD steps: not differentiable, so inputs that require grad are refused (both backends) ----

STEPS = {"linf": (ops.linf_pgd_step_, reference.linf_pgd_step_),
         "l2": (ops.l2_pgd_step_, reference.l2_pgd_step_)}


@on_devices
@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("norm", list(STEPS))
@pytest.mark.parametrize("case", ["leaf_x_adv", "non_leaf_x_adv", "grad", "x_nat", "per_sample_eps"])
def test_step_refuses_inputs_that_require_grad(case, norm, backend, device):
    step = STEPS[norm][0 if backend == "compiled" else 1]
    x_nat = torch.rand(3, 2, 4, 4, device=device)
    x_adv, grad, eps = x_nat.clone(), torch.randn_like(x_nat), torch.full((3,), 0.1, device=device)
    source = None
    if case == "leaf_x_adv":
        x_adv.requires_grad_(True)
    elif case == "non_leaf_x_adv":
        source = x_nat.clone().requires_grad_(True)
        x_adv = source * 1.0
    elif case == "per_sample_eps":
        eps.requires_grad_(True)
    else:
        {"grad": grad, "x_nat": x_nat}[case].requires_grad_(True)
    named = {"leaf_x_adv": "x_adv", "non_leaf_x_adv": "x_adv", "per_sample_eps": "eps_per_sample"}.get(case, case)
    before = x_adv.detach().clone()
    with pytest.raises(RuntimeError, match=f"{named} requires grad, but the PGD step is not differentiable"):
        step(x_adv, grad, x_nat, 0.05, eps)
    assert torch.equal(x_adv.detach(), before), "nothing may be modified"
    with torch.no_grad():  # the documented way: the step itself, without a graph
        out = step(x_adv, grad, x_nat, 0.05, eps)
    assert out is x_adv and not torch.equal(x_adv.detach(), before)


@on_devices
def test_compiled_step_bumps_the_version_counter(device):
    x_nat = torch.rand(2, 3, 4, 4, device=device)
    x_adv, grad = x_nat.clone(), torch.randn_like(x_nat)
    version = x_adv._version
    ops.linf_pgd_step_(x_adv, grad, x_nat, 0.05, 0.1)
    assert x_adv._version > version, "autograd must see the in-place write"
