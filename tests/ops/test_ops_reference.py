"""The compiled ops against cwr_fast.reference: dtypes, shapes (N=0, C=1, C=1000, CIFAR-sized
batches), memory layouts (channels_last, transposed and sliced views), per-sample budgets and
weights, in-place semantics. CPU always; the CUDA variants skip without a GPU."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import devices, forced_reference_backend
from helpers.ops import (FLOAT_DTYPES, as_layout, budgets, dlr_attack_targets, loss_inputs,
                         projection_inputs, run_loss, run_projection, run_step, step_inputs, weights)

from cwr_fast import ops

pytestmark = pytest.mark.usefixtures("compiled_backend")

DTYPE_IDS = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64"}
dtypes = pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: DTYPE_IDS[d])
on_devices = pytest.mark.parametrize("device", devices())

def test_backend_is_compiled():
    """CI must run the op tests on the compiled kernels, not on the reference fallback."""
    if forced_reference_backend():
        assert ops.backend() == "reference"
        return
    assert ops.backend().startswith("compiled"), (
        f"backend() is {ops.backend()!r}: build the extension with `pip install --no-build-isolation -e .`")
    if torch.cuda.is_available() and os.environ.get("CWR_FAST_CUDA", "auto") != "0":
        assert "cuda" in ops.backend(), f"a GPU is present but backend() is {ops.backend()!r}"
    if os.environ.get("CWR_FAST_EXPECT_CUDA_BUILD") == "1":  # set by scripts/test.sh (CWR_FAST_CUDA=1)
        # the CUDA kernels were compiled, linked and registered, even where no GPU can run them
        assert "cuda" in ops.backend(), f"CUDA build expected but backend() is {ops.backend()!r}"


# ---- PGD steps -----------------------------------------------------------------------------------

STEP_SHAPES = [(0, 3, 4, 4), (1, 1), (7,), (5, 3, 8, 8), (3, 5, 7, 9), (2, 3, 33, 31),
               (512, 3, 32, 32)]


@on_devices
@dtypes
@pytest.mark.parametrize("shape", STEP_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("budget", ["scalar", "per_sample"])
@pytest.mark.parametrize("name", ["linf", "l2"])
def test_step_matches_reference(name, budget, shape, dtype, device):
    x_adv, grad, x_nat = step_inputs(shape, dtype, device, seed=sum(shape))
    n = shape[0]
    if budget == "scalar":
        alpha, eps = (2 / 255, 8 / 255) if name == "linf" else (0.1, 0.5)
    else:
        scale = 1.0 if name == "linf" else 32.0
        alpha = budgets(n, device, seed=1, hi=scale * 4 / 255)
        eps = budgets(n, device, seed=2, hi=scale * 16 / 255)
    run_step(name, x_adv, grad, x_nat, alpha, eps, what=f"{budget} {shape} {dtype} {device}")


LAYOUT_COMBOS = [
    ("channels_last",) * 3,
    ("transposed",) * 3,
    ("sliced",) * 3,
    ("batch_sliced",) * 3,
    ("channels_last", "contiguous", "transposed"),
    ("contiguous", "sliced", "channels_last"),
    ("sliced", "channels_last", "contiguous"),
]


@on_devices
@dtypes
@pytest.mark.parametrize("layouts", LAYOUT_COMBOS, ids=lambda c: "-".join(c))
@pytest.mark.parametrize("shape", [(4, 3, 6, 10), (3, 3, 32, 32)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ["linf", "l2"])
def test_step_layouts(name, shape, layouts, dtype, device):
    """Non-contiguous x_adv / grad / x_nat (each in its own layout): same values as contiguous, and
    the op writes only the elements of the x_adv view (the gaps of a sliced buffer stay NaN)."""
    x_adv, grad, x_nat = (as_layout(t, lay) for t, lay in
                          zip(step_inputs(shape, dtype, device, seed=7), layouts))
    alpha, eps = (2 / 255, 8 / 255) if name == "linf" else (0.2, 0.5)
    run_step(name, x_adv, grad, x_nat, alpha, eps, what=f"layouts {layouts} {shape} {dtype} {device}")
    base = x_adv._base
    if base is not None:
        written = torch.zeros(base.shape, dtype=torch.bool, device=device)
        written.as_strided(x_adv.shape, x_adv.stride(), x_adv.storage_offset() - base.storage_offset()
                           ).fill_(True)
        assert base[~written].isnan().all(), f"{name}: wrote outside the x_adv view ({layouts})"


@on_devices
@pytest.mark.parametrize("name", ["linf", "l2"])
def test_step_in_place_on_torch_ops(name, device):
    """torch.ops.cwr_fast.*_pgd_step_ returns nothing and mutates its first argument."""
    if forced_reference_backend():
        pytest.skip("torch.ops.cwr_fast is not registered with the reference backend")
    x_adv, grad, x_nat = step_inputs((4, 3, 5, 5), torch.float32, device, seed=3)
    before = x_adv.clone()
    ptr = x_adv.data_ptr()
    op = getattr(torch.ops.cwr_fast, f"{name}_pgd_step_")
    assert op(x_adv, grad, x_nat, 0.1, 0.3, 0.0, 1.0, None, None) is None
    assert x_adv.data_ptr() == ptr and not torch.equal(x_adv, before)


@on_devices
@dtypes
@pytest.mark.parametrize("name", ["linf", "l2"])
@pytest.mark.parametrize("case", ["alpha_only", "eps_only", "f64_budgets", "f16_budgets",
                                  "sliced_budgets", "zero_d_tensors"])
def test_step_budget_forms(case, name, dtype, device):
    shape = (6, 3, 4, 4)
    x_adv, grad, x_nat = step_inputs(shape, dtype, device, seed=11)
    big = 1.0 if name == "linf" else 16.0
    a = budgets(6, device, seed=4, hi=big * 4 / 255)
    e = budgets(6, device, seed=5, hi=big * 16 / 255)
    alpha, eps = {
        "alpha_only": (a, big * 8 / 255),
        "eps_only": (big * 2 / 255, e),
        "f64_budgets": (a.double(), e.double()),
        "f16_budgets": (a.half(), e.half()),
        "sliced_budgets": (as_layout(a, "batch_sliced"), as_layout(e, "batch_sliced")),
        "zero_d_tensors": (torch.tensor(big * 2 / 255, device=device), torch.tensor(big * 8 / 255, device=device)),
    }[case]
    run_step(name, x_adv, grad, x_nat, alpha, eps, what=f"{case} {dtype} {device}")


@on_devices
@dtypes
@pytest.mark.parametrize("name", ["linf", "l2"])
def test_step_zero_eps_projects_to_x_nat(name, dtype, device):
    """eps = 0 for a sample: its x_adv becomes clamp(x_nat, lo, hi) whatever alpha and grad."""
    x_adv, grad, x_nat = step_inputs((5, 2, 3, 3), dtype, device, seed=13)
    eps = torch.tensor([0.0, 0.1, 0.0, 0.3, 0.0], device=device)
    run_step(name, x_adv, grad, x_nat, 0.05, eps, what=f"eps=0 rows {dtype} {device}")
    for i in (0, 2, 4):
        assert torch.equal(x_adv[i], x_nat[i].clamp(0, 1)), f"{name}: sample {i} with eps=0 moved"


@on_devices
@dtypes
@pytest.mark.parametrize("name", ["linf", "l2"])
@pytest.mark.parametrize("case", ["zero_grad", "huge_eps", "lo_eq_hi", "wide_box", "tiny_grad",
                                  "x_outside_box", "nan_grad"])
def test_step_edge_cases(case, name, dtype, device):
    shape = (4, 3, 5, 6)
    x_adv, grad, x_nat = step_inputs(shape, dtype, device, seed=17)
    alpha, eps, lo, hi = (0.03, 0.1, 0.0, 1.0) if name == "linf" else (0.5, 1.0, 0.0, 1.0)
    if case == "zero_grad":  # sample 1 has an all-zero gradient (L2: no step, no NaN)
        grad[1] = 0
    elif case == "huge_eps":  # no projection, only the box
        eps = 1e3
    elif case == "lo_eq_hi":
        lo = hi = 0.25
    elif case == "wide_box":
        lo, hi = -3.0, 3.0
    elif case == "tiny_grad":  # L2 normalisation of a gradient far below 1 (subnormal in f32)
        grad = grad * 1e-39 if dtype in (torch.float32, torch.float64) else grad * 1e-4
    elif case == "x_outside_box":
        x_nat = x_nat * 3 - 1
        x_adv = x_adv * 3 - 1
    elif case == "nan_grad":  # as the reference: sign(NaN) = 0 for Linf; a NaN norm poisons L2's sample
        grad[2, 1, 1, 1] = float("nan")
    run_step(name, x_adv, grad, x_nat, alpha, eps, lo, hi, what=f"{case} {dtype} {device}")
    if case != "nan_grad":
        assert not x_adv.isnan().any(), f"{name}: NaN in x_adv ({case})"


# ---- losses --------------------------------------------------------------------------------------

LOSS_SHAPES = [(0, 10), (5, 1), (1, 2), (7, 10), (33, 17), (3, 1003), (512, 10), (64, 1000),
               (256, 1000)]


@on_devices
@dtypes
@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("name", ["ce", "margin"])
def test_loss_matches_reference(name, weighted, shape, dtype, device):
    n, c = shape
    logits, target = loss_inputs(n, c, dtype, device, seed=n * 7 + c)
    weight = weights(n, device, seed=n) if weighted else None
    loss, dz = run_loss(name, logits, target, 1.0, weight)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert loss.shape == (n,) and dz.shape == (n, c) and dz.dtype == dtype


@on_devices
@dtypes
@pytest.mark.parametrize("temperature", [0.05, 0.5, 2.0, 30.0])
@pytest.mark.parametrize("shape", [(9, 10), (17, 1000)], ids=lambda s: "x".join(map(str, s)))
def test_ce_temperatures(temperature, shape, dtype, device):
    logits, target = loss_inputs(*shape, dtype, device, seed=23)
    run_loss("ce", logits, target, temperature, weights(shape[0], device, seed=3))
    run_loss("ce", logits, target, temperature, None)


DLR_SHAPES = [(0, 10), (1, 3), (5, 4), (7, 10), (33, 17), (3, 1003), (512, 10), (64, 1000),
              (256, 1000)]


@on_devices
@dtypes
@pytest.mark.parametrize("shape", DLR_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("name", ["dlr", "dlr_t"])
def test_dlr_matches_reference(name, weighted, shape, dtype, device):
    n, c = shape
    if name == "dlr_t" and c < 4:
        pytest.skip("the targeted DLR loss needs C >= 4")
    logits, target = loss_inputs(n, c, dtype, device, seed=n * 5 + c)
    weight = weights(n, device, seed=n) if weighted else None
    loss, dz = run_loss(name, logits, target, 1.0, weight)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert loss.shape == (n,) and dz.shape == (n, c) and dz.dtype == dtype
    assert ((dz != 0).sum(dim=1) <= (5 if name == "dlr_t" else 4)).all(), "dz has too many nonzeros"


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_dlr_is_autoattacks_loss(targeted):
    """Loss and gradient equal the reference AutoAttack's DLR formulas (pyautoattack, with
    autograd through its sort) on float64 logits without ties."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    logits, target = loss_inputs(64, 10, torch.float64, "cpu", seed=41)
    z = logits.clone().requires_grad_(True)
    if targeted:
        toward = dlr_attack_targets(target, 10)
        peer = APGDAttack_targeted(None, eps=0.1)
        peer.y_target = toward
        theirs = peer.dlr_loss_targeted(z, target)
    else:
        toward = None
        theirs = APGDAttack(None, eps=0.1).dlr_loss(z, target)
    (their_grad,) = torch.autograd.grad(theirs.sum(), z)
    loss, dz = ops.dlr_loss_fwd_bwd(logits, target, toward)
    torch.testing.assert_close(loss, theirs.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dz, their_grad, rtol=1e-10, atol=1e-12)


@on_devices
@dtypes
def test_dlr_ties_follow_the_stable_descending_order(dtype, device):
    """Tied logits rank by lower index (torch.sort(descending=True, stable=True)); the gradient
    lands on those positions."""
    logits = torch.zeros(4, 6, dtype=dtype, device=device)
    logits[0] = torch.tensor([1.0, 3.0, 3.0, 2.0, 2.0, 0.0])  # pi = 1, 2, 3, 4, ...; y = 0
    logits[1] = torch.tensor([3.0, 2.0, 1.0, 1.0, 1.0, 0.0])  # pi3 = 2 of the tied 2, 3, 4
    logits[2] = 1.0                                           # everything tied
    logits[3] = torch.tensor([0.0, 3.0, 2.0, 1.0, 1.0, 1.0])  # y = 1 is the unique max
    target = torch.tensor([0, 1, 5, 1], device=device)
    for name in ("dlr", "dlr_t"):
        toward = torch.tensor([5, 4, 0, 3], device=device) if name == "dlr_t" else None
        _, dz = run_loss(name, logits, target, what="ties", attack_target=toward)
        nonzero = [sorted(torch.nonzero(row).flatten().tolist()) for row in dz.float().cpu()]
        if name == "dlr":  # y, competitor, pi1, pi3
            assert nonzero[0] == [0, 1, 3], nonzero  # competitor = pi1 = 1, pi3 = 3
            assert nonzero[1] == [0, 1, 2], nonzero  # competitor = pi1 = 0, pi3 = 2
            assert nonzero[2] == [0, 5], nonzero     # all tied: N = 0, only y and pi1 = 0
            assert nonzero[3] == [1, 2, 3], nonzero  # y = pi1, competitor = pi2 = 2, pi3 = 3
        else:  # y, target, pi1, pi3, pi4
            assert nonzero[0] == [0, 1, 3, 4, 5], nonzero


@on_devices
@dtypes
@pytest.mark.parametrize("name", ["ce", "margin", "dlr", "dlr_t"])
@pytest.mark.parametrize("layout", ["transposed", "sliced", "batch_sliced", "sliced_target_weight",
                                    "f64_weight", "f16_weight"])
def test_loss_layouts(layout, name, dtype, device):
    n, c = 12, 37
    logits, target = loss_inputs(n, c, dtype, device, seed=29)
    weight = weights(n, device, seed=5)
    if layout in ("transposed", "sliced", "batch_sliced"):
        logits = as_layout(logits, layout)
        assert not logits.is_contiguous()
    elif layout == "sliced_target_weight":
        target, weight = as_layout(target, "batch_sliced"), as_layout(weight, "batch_sliced")
    elif layout == "f64_weight":
        weight = weight.double()
    elif layout == "f16_weight":
        weight = weight.half()
    run_loss(name, logits, target, 1.5 if name == "ce" else 1.0, weight, what=layout)


@on_devices
@dtypes
def test_margin_ties_pick_first_competitor(dtype, device):
    """With tied competitors, the gradient goes to the first arg-max j != y (like the reference)."""
    logits = torch.zeros(6, 10, dtype=dtype, device=device)
    logits[3, [2, 7]] = 1.0  # tie between classes 2 and 7
    logits[4, :] = 1.0       # everything tied
    logits[5, 5] = 2.0       # y = 5 is the unique max; tie among the others
    target = torch.tensor([0, 3, 9, 0, 4, 5], device=device)
    loss, dz = run_loss("margin", logits, target, what="ties")
    for i, j in enumerate([1, 0, 0, 2, 0, 0]):
        assert dz[i, j].item() == 1.0 and dz[i, target[i]].item() == -1.0, f"row {i}: {dz[i].tolist()}"


@on_devices
@dtypes
@pytest.mark.parametrize("name", ["ce", "margin", "dlr", "dlr_t"])
@pytest.mark.parametrize("case", ["large_logits", "neg_inf_non_target", "constant_rows", "nan_logits"])
def test_loss_extreme_logits(case, name, dtype, device):
    n, c = 6, 50
    logits, target = loss_inputs(n, c, torch.float64, "cpu", seed=31)
    if case == "large_logits":  # stability: needs the max-subtraction
        big = {torch.float16: 6e4, torch.bfloat16: 1e30}.get(dtype, 1e30)
        logits = logits / logits.abs().max() * big
    elif case == "neg_inf_non_target":  # masked classes
        mask = torch.zeros(n, c, dtype=torch.bool)
        mask[:, ::3] = True
        mask[torch.arange(n), target] = False
        logits = logits.masked_fill(mask, float("-inf"))
    elif case == "constant_rows":
        logits = torch.full((n, c), 2.5, dtype=torch.float64)
    elif case == "nan_logits":  # NaN propagates as in the reference (a competitor, the target)
        logits[0, (target[0] + 1) % c] = float("nan")
        logits[1, target[1]] = float("nan")
    logits = logits.to(dtype=dtype, device=device)
    target = target.to(device)
    loss, dz = run_loss(name, logits, target, 1.0, None, what=case)
    # As in the reference: a targeted DLR toward a -inf class has an infinite loss, and constant rows
    # have a DLR denominator of 1e-12, whose 1e12 gradient overflows float16.
    dlr_inf = (name == "dlr_t" and case == "neg_inf_non_target") or \
        (name.startswith("dlr") and case == "constant_rows" and dtype == torch.float16)
    if case != "nan_logits" and not dlr_inf:
        assert loss.isfinite().all() and dz.isfinite().all(), f"{name}: non-finite output ({case})"


# ---- hyperplane projections ------------------------------------------------------------------------

PROJECTION_SHAPES = [(0, 5), (3, 0), (1, 1), (2, 3), (9, 7), (17, 784), (6, 3072), (510, 784)]
projection_dtypes = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])


@on_devices
@projection_dtypes
@pytest.mark.parametrize("shape", PROJECTION_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0])
@pytest.mark.parametrize("name", ["linf", "l2"])
def test_projection_matches_reference(name, scale, shape, dtype, device):
    t, w, b = projection_inputs(*shape, dtype, device, seed=sum(shape), scale=scale)
    d = run_projection(name, t, w, b, what=f"scale {scale}")
    if d.numel() == 0:
        return
    x = (t + d).double()
    assert x.min().item() >= -1e-6 and x.max().item() <= 1 + 1e-6, f"{name}: left the box"
    # where the plane is in reach, the projection lands on it
    reach = plane_in_reach(t, w, b, name)
    gap = ((w.double() * x).sum(dim=1) - b.double()).abs()
    assert (gap[reach] <= 1e-3 * (1 + b.double()[reach].abs())).all(), f"{name}: misses the plane"


def plane_in_reach(t, w, b, name):
    """Rows whose plane w . x = b meets the box: moving every coordinate to its bound against w
    lowers |w . t - b| by at least |w . t - b|."""
    t, w, b = t.double(), w.double(), b.double()
    if name == "l2":
        w = torch.where(w.abs() > 1e-8, w, torch.zeros_like(w))
    c = (w * t).sum(dim=1) - b
    w = w * torch.where(c >= 0, 1.0, -1.0).to(w.dtype)[:, None]
    return (torch.where(w > 0, t, 1 - t) * w.abs()).sum(dim=1) >= c.abs()


@projection_dtypes
@pytest.mark.parametrize("name", ["linf", "l2"])
def test_projection_is_the_reference_autoattacks(name, dtype):
    """The same perturbations as the reference AutoAttack's FAB projections (pyautoattack)."""
    from pyautoattack.fab_projections import projection_l2, projection_linf

    peer = projection_linf if name == "linf" else projection_l2
    for scale in (0.01, 1.0, 30.0):
        t, w, b = projection_inputs(64, 784, dtype, "cpu", seed=5, scale=scale)
        d = run_projection(name, t, w, b, what=f"scale {scale}")
        torch.testing.assert_close(d, peer(t, w, b), rtol=0, atol=5e-4 if dtype == torch.float32 else 1e-8)


@pytest.mark.parametrize("name", ["linf", "l2"])
def test_projection_is_optimal(name):
    """Against a generic solver on small rows: feasible, and no longer than its solution (Linf:
    the linear program min s, -s <= d <= s; L2: a quadratic program, by SLSQP)."""
    import numpy as np
    from scipy.optimize import linprog, minimize

    t, w, b = projection_inputs(40, 6, torch.float64, "cpu", seed=9, scale=0.3)
    d = run_projection(name, t, w, b)
    reach = plane_in_reach(t, w, b, name)
    for i in range(1, 40):
        ti, wi, bi = t[i].numpy(), w[i].numpy(), b[i].item()
        if name == "l2":
            wi = np.where(np.abs(wi) > 1e-8, wi, 0.0)
        if not reach[i]:  # out of reach: the box corner against w (on the side of the plane)
            toward = torch.from_numpy(wi) * (1 if wi @ ti - bi >= 0 else -1)
            corner = torch.where(toward != 0, torch.where(toward > 0, -t[i], 1 - t[i]), 0.0)
            assert torch.allclose(d[i], corner), f"row {i}: not the corner"
            continue
        bounds = list(zip(-ti, 1 - ti))
        if name == "linf":  # variables (d, s): min s with -s <= d <= s
            res = linprog(np.r_[np.zeros(6), 1.0],
                          A_ub=np.block([[np.eye(6), -np.ones((6, 1))], [-np.eye(6), -np.ones((6, 1))]]),
                          b_ub=np.zeros(12), A_eq=np.r_[wi, 0.0][None], b_eq=[bi - wi @ ti],
                          bounds=bounds + [(0, None)])
            best, size = (res.x[6] if res.success else None), d[i].abs().max().item()
        else:
            res = minimize(lambda v: v @ v, np.zeros(6), jac=lambda v: 2 * v, method="SLSQP",
                           bounds=bounds, constraints=[{"type": "eq", "fun": lambda v: wi @ (ti + v) - bi,
                                                        "jac": lambda v: wi}],
                           options={"maxiter": 1000, "ftol": 1e-14})
            best, size = (float(np.sqrt(res.x @ res.x)) if res.success else None), d[i].norm().item()
        assert best is not None, f"row {i}: the solver failed on a reachable plane ({res.message})"
        assert size <= best + 1e-6, f"row {i}: |d| = {size} > optimum {best}"
