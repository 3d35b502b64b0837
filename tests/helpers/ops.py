"""Helpers shared by tests/ops/: input makers, layouts and per-dtype tolerances.

Tolerances. The ops compute in float32 (float64 stays float64) and round once to the output dtype,
so an output may differ from the reference by one unit in the last place (ulp) of its dtype, plus
the float32 (float64) rounding error of the computation itself (`rtol`, `atol` below), scaled by
the magnitudes that the computation goes through.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cwr_fast import ops, reference

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]

_MANTISSA = {torch.float16: 10, torch.bfloat16: 7, torch.float32: 23, torch.float64: 52}
_MIN_EXP = {torch.float16: -14, torch.bfloat16: -126, torch.float32: -126, torch.float64: -1022}


def compute_eps(dtype: torch.dtype) -> float:
    """Unit roundoff of the computation for inputs of `dtype` (float32, or float64 for float64)."""
    return 2.0 ** -52 if dtype == torch.float64 else 2.0 ** -23


def ulp(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Spacing of `dtype` at |x| (float64 tensor), subnormal spacing below the normal range."""
    a = x.detach().to(torch.float64).abs().nan_to_num(posinf=0.0, neginf=0.0)
    _, e = torch.frexp(a)  # a = m * 2**e, m in [0.5, 1)
    e = torch.clamp(e.to(torch.float64) - 1, min=_MIN_EXP[dtype])
    return torch.pow(2.0, e - _MANTISSA[dtype])


def assert_close_ulp(actual: Tensor, expected: Tensor, *, what: str, ulps: float = 1.0,
                     rtol: float = 0.0, atol: float | Tensor = 0.0) -> None:
    """|actual - expected| <= ulps * ulp(expected, dtype) + rtol * |expected| + atol, elementwise
    (atol: a number, or a tensor that broadcasts to expected's shape).

    `dtype` is expected's dtype. On failure the message names the op/case (`what`), dtype, shape,
    the max error, the worst element and the tolerance there."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.device == expected.device, f"{what}: device {actual.device} != {expected.device}"
    if expected.numel() == 0:
        return
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    nan_a, nan_e = a.isnan(), e.isnan()
    if not torch.equal(nan_a, nan_e):
        idx = (nan_a != nan_e).nonzero()[0].tolist()
        raise AssertionError(f"{what}: NaN mismatch ({expected.dtype}, shape {tuple(expected.shape)}) "
                             f"at {idx}: got {a[tuple(idx)].item()}, expected {e[tuple(idx)].item()}")
    inf_e = e.isinf()
    if not torch.equal(a[inf_e], e[inf_e]):
        raise AssertionError(f"{what}: infinities differ ({expected.dtype}, shape {tuple(expected.shape)})")
    finite = ~(nan_e | inf_e)
    a, e = a[finite], e[finite]
    if isinstance(atol, Tensor):
        atol = atol.detach().to(torch.float64).cpu().expand(finite.shape)[finite]
    err = (a - e).abs()
    tol = ulps * ulp(e, expected.dtype) + rtol * e.abs() + atol
    bad = err > tol
    if bad.any():
        ratio = torch.where(bad, err / tol.clamp_min(1e-300), torch.zeros_like(err))
        k = int(ratio.argmax())
        full_idx = finite.nonzero()[k].tolist()
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {e.numel()} elements out of tolerance "
            f"(dtype {expected.dtype}, shape {tuple(expected.shape)}, strides {tuple(actual.stride())}); "
            f"max abs error {err.max().item():.6g}; worst at index {full_idx}: got {a[k].item()!r}, "
            f"expected {e[k].item()!r}, error {err[k].item():.6g} > tolerance {tol[k].item():.6g} "
            f"({ulps} ulp + rtol {rtol:g} + atol {atol:g})")


# ---- tolerances per op ---------------------------------------------------------------------------

def step_tolerance(dtype: torch.dtype, scale: float = 1.0, l2: bool = False) -> dict:
    """x_adv of a PGD step. `scale` bounds the magnitudes involved (|x|, |lo|, |hi|, alpha, eps)."""
    u = compute_eps(dtype)
    # Linf: a handful of roundings of values <= scale. L2: the norms add a relative error that
    # grows (slowly) with the number of summed elements; 64 u is generous for any image size.
    return dict(ulps=0.0 if dtype == torch.float64 else 1.0, rtol=0.0,
                atol=(64 if l2 else 4) * u * scale)


def loss_tolerance(logits: Tensor, temperature: float, weight: Tensor | None) -> dict:
    """Per-sample loss (float32, float64 for float64 logits): lse(z/T) - z_y/T, so its absolute
    error scales with max|z|/T + log C (and |w|)."""
    u = compute_eps(logits.dtype)
    zmax = logits.detach().abs().to(torch.float64).nan_to_num(posinf=0, neginf=0).max().item() \
        if logits.numel() else 0.0
    wmax = weight.detach().abs().max().item() if weight is not None and weight.numel() else 1.0
    c = logits.shape[1] if logits.dim() == 2 else 1
    scale = (zmax / temperature + math.log(max(c, 1)) + 1.0) * max(wmax, 1.0)
    return dict(ulps=0.0, rtol=16 * u, atol=16 * u * scale)


def grad_tolerance(logits: Tensor, temperature: float, weight: Tensor | None) -> dict:
    """dL/dz (dtype of logits), |dz| <= |w|/T: one ulp of the dtype plus the float32 error of
    softmax(z/T) - onehot (which cancels near p_y = 1, hence an absolute term)."""
    u = compute_eps(logits.dtype)
    wmax = weight.detach().abs().max().item() if weight is not None and weight.numel() else 1.0
    return dict(ulps=0.0 if logits.dtype == torch.float64 else 1.0, rtol=16 * u,
                atol=16 * u * max(wmax, 1.0) / temperature)


def dlr_tolerances(logits: Tensor, target: Tensor, attack_target: Tensor | None,
                   weight: Tensor | None) -> tuple[dict, dict]:
    """(loss, dz) tolerances of the DLR loss -N/D: the ops do the reference's float32 operations
    (up to fused multiply-adds), so the error is a few roundings of the terms 1/D and N/D^2 of
    each row, |w| (1/|D| + |N|/D^2); dz adds one ulp of its dtype."""
    u = compute_eps(logits.dtype)
    z = logits.detach().to(torch.float64).cpu()
    y = target.cpu()
    if z.shape[0] == 0:
        return dict(ulps=0.0), dict(ulps=0.0)
    top = torch.sort(z, dim=1, descending=True, stable=True)
    v, order = top.values, top.indices
    if attack_target is None:
        other = torch.where(order[:, 0] != y, v[:, 0], v[:, 1])
        d = v[:, 0] - v[:, 2] + 1e-12
    else:
        other = z.gather(1, attack_target.cpu()[:, None]).squeeze(1)
        d = v[:, 0] - 0.5 * (v[:, 2] + v[:, 3]) + 1e-12
    n = z.gather(1, y[:, None]).squeeze(1) - other
    w = weight.detach().to(torch.float64).cpu().abs() if weight is not None else torch.ones_like(d)
    d = d.abs().clamp_min(1e-12)
    scale = w * (1 / d + n.abs() / d ** 2)
    loss_tol = dict(ulps=0.0, rtol=8 * u, atol=8 * u * w * n.abs() / d)
    grad_tol = dict(ulps=0.0 if logits.dtype == torch.float64 else 1.0, rtol=8 * u,
                    atol=8 * u * scale[:, None])
    return loss_tol, grad_tol


def dlr_attack_targets(target: Tensor, num_classes: int) -> Tensor:
    """A deterministic target class != y for every sample (for the targeted DLR tests)."""
    shift = 1 + torch.arange(target.shape[0], device=target.device) % max(num_classes - 1, 1)
    return (target + shift) % num_classes


# ---- inputs --------------------------------------------------------------------------------------

def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(shape, dtype, device, gen, lo=0.0, hi=1.0) -> Tensor:
    t = torch.rand(shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo
    return t.to(dtype=dtype, device=device)


def randn(shape, dtype, device, gen, std=1.0) -> Tensor:
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * std).to(dtype=dtype, device=device)


def step_inputs(shape, dtype, device, seed=0, eps=8 / 255, lo=0.0, hi=1.0):
    """x_nat in [lo, hi]; x_adv = x_nat plus noise up to 2*eps (partly outside the ball and box);
    grad normal with some exact zeros (sign(0) = 0)."""
    gen = generator(seed)
    x_nat = rand(shape, torch.float64, "cpu", gen, lo, hi)
    x_adv = x_nat + rand(shape, torch.float64, "cpu", gen, -2 * eps, 2 * eps)
    grad = randn(shape, torch.float64, "cpu", gen)
    grad = torch.where(rand(shape, torch.float64, "cpu", gen) < 0.05, torch.zeros_like(grad), grad)
    return tuple(t.to(dtype=dtype, device=device) for t in (x_adv, grad, x_nat))


def loss_inputs(n, c, dtype, device, seed=0, std=3.0):
    gen = generator(seed)
    logits = randn((n, c), dtype, device, gen, std)
    target = torch.randint(0, c, (n,), generator=gen).to(device)
    return logits, target


def weights(n, device, seed=0, dtype=torch.float32) -> Tensor:
    """Per-sample weights in [0, 2], one of them zero (negative weights are refused by the ops)."""
    gen = generator(seed + 1000)
    w = rand((n,), torch.float64, "cpu", gen, 0.0, 2.0)
    if n > 2:
        w[1] = 0.0
    return w.to(dtype=dtype, device=device)


def budgets(n, device, seed=0, lo=0.0, hi=16 / 255, dtype=torch.float32) -> Tensor:
    """Per-sample alpha or eps >= 0, one of them 0."""
    gen = generator(seed + 2000)
    v = rand((n,), torch.float64, "cpu", gen, lo, hi)
    if n > 1:
        v[0] = 0.0
    return v.to(dtype=dtype, device=device)


# ---- layouts -------------------------------------------------------------------------------------
# Each returns a tensor with the values of `t` in a different memory layout (possibly a view into
# a larger buffer), so the ops see non-contiguous inputs with known values.

def as_layout(t: Tensor, layout: str) -> Tensor:
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t.contiguous()
    if layout == "transposed":  # last two dims stored transposed: a permuted, dense view
        if t.dim() < 2:
            return t.contiguous()
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "sliced":  # every other element of the last dim of a buffer twice as wide
        buf = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        buf.fill_(float("nan") if t.is_floating_point() else 0)
        view = buf[..., ::2]
        view.copy_(t)
        return view
    if layout == "batch_sliced":  # every other sample of a buffer with twice the batch
        buf = torch.empty(2 * t.shape[0], *t.shape[1:], dtype=t.dtype, device=t.device)
        buf.fill_(float("nan") if t.is_floating_point() else 0)
        view = buf[::2]
        view.copy_(t)
        return view
    raise ValueError(layout)


# ---- op against reference -----------------------------------------------------------------------

STEPS = {"linf": (ops.linf_pgd_step_, reference.linf_pgd_step_),
         "l2": (ops.l2_pgd_step_, reference.l2_pgd_step_)}
LOSSES = {"ce": (ops.temperature_ce_fwd_bwd, reference.temperature_ce_fwd_bwd),
          "margin": (ops.margin_loss_fwd_bwd, reference.margin_loss_fwd_bwd),
          "dlr": (ops.dlr_loss_fwd_bwd, reference.dlr_loss_fwd_bwd),
          "dlr_t": (ops.dlr_loss_fwd_bwd, reference.dlr_loss_fwd_bwd)}


def unchanged(t: Tensor, before: Tensor) -> bool:
    """Bitwise the same values (NaN equal to NaN)."""
    return t.shape == before.shape and torch.allclose(t, before, rtol=0.0, atol=0.0, equal_nan=True)


def _step_scale(x_adv, x_nat, alpha, eps, lo, hi) -> float:
    def mx(v):
        if isinstance(v, torch.Tensor):
            return v.detach().abs().max().item() if v.numel() else 0.0
        return abs(float(v))
    return max(1.0, mx(x_adv), mx(x_nat), mx(alpha), mx(eps), abs(lo), abs(hi))


def run_step(name, x_adv, grad, x_nat, alpha, eps, lo=0.0, hi=1.0, what=""):
    """Runs the op in place on x_adv and the reference on contiguous copies; compares."""
    op, ref = STEPS[name]
    expected = x_adv.detach().clone().contiguous()
    ref(expected, grad.contiguous(), x_nat.contiguous(), alpha, eps, lo, hi)
    grad_before, x_nat_before = grad.clone(), x_nat.clone()
    ptr = x_adv.data_ptr()
    out = op(x_adv, grad, x_nat, alpha, eps, lo, hi)
    assert out is x_adv and x_adv.data_ptr() == ptr, f"{name}: must update x_adv in place and return it"
    assert unchanged(grad, grad_before), f"{name}: grad was modified"
    assert unchanged(x_nat, x_nat_before), f"{name}: x_nat was modified"
    tol = step_tolerance(x_adv.dtype, _step_scale(expected, x_nat, alpha, eps, lo, hi), l2=name == "l2")
    assert_close_ulp(x_adv, expected, what=f"{name}_pgd_step_ {what}", **tol)


def run_loss(name, logits, target, temperature=1.0, weight=None, what="", attack_target=None):
    """Runs loss `name` (ce, margin, dlr, dlr_t: targeted DLR, toward `attack_target` or
    dlr_attack_targets) and the reference on contiguous copies; compares."""
    op, ref = LOSSES[name]
    if name == "ce":
        args = (logits, target, temperature, weight)
    elif name == "margin":
        args = (logits, target, weight)
    else:
        if name == "dlr_t" and attack_target is None:
            attack_target = dlr_attack_targets(target, logits.shape[1])
        args = (logits, target, attack_target if name == "dlr_t" else None, weight)
    ref_args = tuple(a.contiguous() if isinstance(a, Tensor) else a for a in args)
    logits_before = logits.clone()
    loss, dz = op(*args)
    exp_loss, exp_dz = ref(*ref_args)
    assert unchanged(logits, logits_before), f"{name}: logits were modified"
    t = temperature if name == "ce" else 1.0
    what = f"{name} {what} (N, C)={tuple(logits.shape)} {logits.dtype} T={t} weight={weight is not None}"
    assert loss.device == logits.device and dz.device == logits.device
    if name.startswith("dlr"):
        loss_tol, grad_tol = dlr_tolerances(*ref_args[:2], ref_args[2], weight)
    else:
        loss_tol, grad_tol = loss_tolerance(logits, t, weight), grad_tolerance(logits, t, weight)
    assert_close_ulp(loss, exp_loss, what=what + " loss", **loss_tol)
    assert_close_ulp(dz, exp_dz, what=what + " dz", **grad_tol)
    return loss, dz


# ---- hyperplane projections (FAB) ----------------------------------------------------------------

PROJECTIONS = {"linf": (ops.hyperplane_projection_linf, reference.hyperplane_projection_linf),
               "l2": (ops.hyperplane_projection_l2, reference.hyperplane_projection_l2)}


def projection_inputs(m, d, dtype, device, seed=0, scale=1.0):
    """points in [0, 1], normals with some exact zeros (and some below the L2 threshold), offsets
    b = w . t + scale * noise: from rows on the plane (c = 0) to rows whose plane is out of reach."""
    gen = generator(seed)
    t = rand((m, d), torch.float64, "cpu", gen)
    w = randn((m, d), torch.float64, "cpu", gen)
    zero = rand((m, d), torch.float64, "cpu", gen)
    w = torch.where(zero < 0.1, torch.zeros_like(w), w)
    w = torch.where((zero > 0.1) & (zero < 0.12), w * 1e-9, w)
    b = (w * t).sum(dim=1) + scale * randn((m,), torch.float64, "cpu", gen) * (d ** 0.5)
    if m > 1:
        b[0] = (w[0] * t[0]).sum()  # on the plane already
    return tuple(v.to(dtype=dtype, device=device) for v in (t, w, b))


def projection_tolerance(dtype) -> dict:
    """The ops sum in float64 and the reference in the input dtype: lam, and so d, differ by a few
    roundings of sums over the row."""
    return dict(ulps=0.0, rtol=0.0, atol=1e-10 if dtype == torch.float64 else 5e-5)


def run_projection(name, t, w, b, what=""):
    op, ref = PROJECTIONS[name]
    before = [v.clone() for v in (t, w, b)]
    d = op(t, w, b)
    assert all(unchanged(v, v0) for v, v0 in zip((t, w, b), before)), f"{name}: an input was modified"
    expected = ref(t.contiguous(), w.contiguous(), b.contiguous())
    assert_close_ulp(d, expected, what=f"{name} projection {what} {tuple(t.shape)} {t.dtype}",
                     **projection_tolerance(t.dtype))
    return d


# ---- the Square Attack's Linf query loop ---------------------------------------------------------

SQUARE_EPS = 8 / 255


def square_draws(m, c, device, seed=0) -> Tensor:
    """u [m, 2 + c] float32 in [0, 1), with edge draws in the first rows: all 0 (window at the
    corner, signs -1), the largest float32 below 1 (the window's start rounds up to H - side), and
    exactly 0.5 (sign +1)."""
    gen = generator(seed + 3000)
    u = torch.rand((m, 2 + c), generator=gen, dtype=torch.float32)
    edges = [0.0, 1.0 - 2.0 ** -24, 0.5]
    for row, value in zip(range(m), edges):
        u[row] = value
    return u.to(device)


def square_query_inputs(shape, dtype, device, seed=0, eps=SQUARE_EPS):
    """(x_nat, x_best, u): x_nat in [0, 1] with some exact 0s and 1s (so the clamp bites), x_best
    within eps of it in [0, 1]."""
    gen = generator(seed)
    x_nat = rand(shape, torch.float64, "cpu", gen)
    pick = rand(shape, torch.float64, "cpu", gen)
    x_nat = torch.where(pick < 0.05, 0.0, torch.where(pick > 0.95, 1.0, x_nat))
    x_best = (x_nat + rand(shape, torch.float64, "cpu", gen, -eps, eps)).clamp(0.0, 1.0)
    u = square_draws(shape[0], shape[1], device, seed)
    return x_nat.to(dtype=dtype, device=device), x_best.to(dtype=dtype, device=device), u


def square_accept_inputs(shape, k, image_dtype, logit_dtype, device, seed=0):
    """(x_best, margin_best, x_new, logits, y): logits with ties (small integers) in some rows;
    margin_best a mix of +inf, values around the margins and the exact margin of some rows (not
    accepted: the rule is strict)."""
    gen = generator(seed)
    m = shape[0]
    x_best = rand(shape, torch.float64, "cpu", gen).to(dtype=image_dtype, device=device)
    x_new = rand(shape, torch.float64, "cpu", gen).to(dtype=image_dtype, device=device)
    logits = randn((m, k), torch.float64, "cpu", gen, std=3.0)
    ties = rand((m,), torch.float64, "cpu", gen) < 0.3
    logits = torch.where(ties[:, None], logits.round().clamp(-1, 1), logits).to(logit_dtype)
    y = torch.randint(0, k, (m,), generator=gen)
    margin = reference.square_margin(logits, y)
    best = margin + randn((m,), torch.float64, "cpu", gen).float()
    kind = torch.randint(0, 4, (m,), generator=gen)
    best = torch.where(kind == 0, float("inf"), torch.where(kind == 1, margin, best))
    return (x_best, best.to(device), x_new, logits.to(device), y.to(device))

