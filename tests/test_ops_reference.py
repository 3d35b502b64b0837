"""The compiled ops against cwr_fast.reference: dtypes, shapes (N=0, C=1, C=1000, CIFAR-sized
batches), memory layouts (channels_last, transposed and sliced views), per-sample budgets and
weights, in-place semantics. CPU always; the CUDA variants skip without a GPU."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import devices, forced_reference_backend
from ops_helpers import (FLOAT_DTYPES, as_layout, budgets, loss_inputs, run_loss, run_step,
                         step_inputs, weights)

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


@on_devices
@dtypes
@pytest.mark.parametrize("name", ["ce", "margin"])
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
@pytest.mark.parametrize("name", ["ce", "margin"])
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
    if case != "nan_logits":
        assert loss.isfinite().all() and dz.isfinite().all(), f"{name}: non-finite output ({case})"
