"""Benchmarks of the fused ops against what they replace (pytest-benchmark).

Each op at each size runs in four variants that share one benchmark group ("<op> <size> <dtype>
<device>"), so ratios read straight off the table (and bench/ratios.py prints them):
  fused    cwr_fast.ops (the compiled kernels)
  eager    the eager PyTorch chain the op replaces (for the losses: F.cross_entropy(z / T, y) or
           the margin, plus an autograd backward)
  compile  torch.compile of that chain (for the losses: of a hand-written forward + gradient,
           e.g. softmax - onehot, which is what Inductor can fuse)
  copy     dst.copy_(src) over the same number of bytes as the op moves: the bandwidth bar.
           Steps read x_adv, grad, x_nat and write x_adv (4 tensors of traffic), so the copy is
           over tensors of twice the size; losses read the logits and write dz (2 tensors).

The Square Attack's Linf query (square_linf_query) replaces a whole query of the attack: its fused
variant includes the op's one torch.rand draw, eager is the chain of PyTorch ops the attack used
before the op (linf_query_eager: three draws, the window mask and the corner), and compile is
torch.compile of that chain. The query reads
x_nat and x_best and writes the output (3 tensors), at the window side of query 500 (p = 0.1).

    pytest bench/bench_ops.py --benchmark-only                 # time everything
    pytest bench/bench_ops.py --benchmark-disable              # run each once (smoke test)
    pytest bench/bench_ops.py --benchmark-only --benchmark-json=out.json && python bench/ratios.py out.json
"""

from __future__ import annotations

import functools
import os

import pytest
import torch
import torch.nn.functional as F

from cwr_fast import ops
from cwr_fast.attacks.square import p_selection, window_side

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
STEP_SIZES = {"512x3x32x32": (512, 3, 32, 32), "256x3x224x224": (256, 3, 224, 224)}
LOSS_SIZES = {"512x10": (512, 10), "256x1000": (256, 1000)}
PROJECTION_SIZES = {"500x784": (500, 784), "500x3072": (500, 3072)}  # FAB on MNIST / CIFAR batches
SQUARE_SIZES = {"256x1x28x28": (256, 1, 28, 28), "512x3x32x32": (512, 3, 32, 32)}  # Square Attack queries
SQUARE_QUERY = 500  # the query whose window side the Square benchmarks use
VARIANTS = ["fused", "eager", "compile", "copy"]
DTYPE = torch.float32
ALPHA, EPS = 2 / 255, 8 / 255          # Linf budgets
L2_ALPHA, L2_EPS = 0.1, 0.5            # L2 budgets
TEMPERATURE = 2.0


# ---- the eager chains the ops replace ------------------------------------------------------------

def linf_step_eager(x_adv, grad, x_nat, alpha: float, eps: float, lo: float = 0.0, hi: float = 1.0):
    delta = torch.clamp(x_adv + alpha * grad.sign() - x_nat, -eps, eps)
    return torch.clamp(x_nat + delta, lo, hi)


def l2_step_eager(x_adv, grad, x_nat, alpha: float, eps: float, lo: float = 0.0, hi: float = 1.0):
    n = x_adv.shape[0]
    view = (n,) + (1,) * (x_adv.dim() - 1)
    g_norm = torch.linalg.vector_norm(grad.flatten(1), dim=1).view(view)
    delta = x_adv + alpha * grad / (g_norm + 1e-12) - x_nat
    d_norm = torch.linalg.vector_norm(delta.flatten(1), dim=1).view(view)
    factor = torch.clamp(eps / d_norm.clamp_min(1e-12), max=1.0)
    return torch.clamp(x_nat + delta * factor, lo, hi)


def ce_eager(logits, target, temperature: float):
    z = logits.detach().requires_grad_(True)
    loss = F.cross_entropy(z / temperature, target, reduction="sum")
    (dz,) = torch.autograd.grad(loss, z)
    return loss, dz


def ce_manual(logits, target, temperature: float):
    """Per-sample CE and its gradient by hand: (softmax(z/T) - onehot(y)) / T."""
    z = logits.float() / temperature
    lse = torch.logsumexp(z, dim=1)
    loss = lse - z.gather(1, target[:, None]).squeeze(1)
    p = torch.exp(z - lse[:, None])
    dz = (p - F.one_hot(target, logits.shape[1]).to(p.dtype)) / temperature
    return loss, dz.to(logits.dtype)


def margin_eager(logits, target):
    z = logits.detach().requires_grad_(True)
    z_true = z.gather(1, target[:, None]).squeeze(1)
    z_other = z.scatter(1, target[:, None], float("-inf")).max(dim=1).values
    loss = (z_other - z_true).sum()
    (dz,) = torch.autograd.grad(loss, z)
    return loss, dz


def margin_manual(logits, target):
    """Per-sample margin and its gradient by hand: onehot(argmax_{j!=y}) - onehot(y)."""
    c = logits.shape[1]
    z = logits.float()
    z_true = z.gather(1, target[:, None]).squeeze(1)
    z_other, j = z.scatter(1, target[:, None], float("-inf")).max(dim=1)
    dz = F.one_hot(j, c).to(z.dtype) - F.one_hot(target, c).to(z.dtype)
    return z_other - z_true, dz.to(logits.dtype)


def dlr_eager(logits, target):
    """The reference AutoAttack's DLR loss (sort, then autograd through it)."""
    z = logits.detach().requires_grad_(True)
    top = z.sort(dim=1, descending=True).values
    z_y = z.gather(1, target[:, None]).squeeze(1)
    y_first = z.argmax(dim=1) == target
    z_other = torch.where(y_first, top[:, 1], top[:, 0])
    loss = (-(z_y - z_other) / (top[:, 0] - top[:, 2] + 1e-12)).sum()
    (dz,) = torch.autograd.grad(loss, z)
    return loss, dz


def dlr_manual(logits, target):
    """Per-sample DLR loss and its gradient by hand (top-3 with topk, scatter of the 4 terms)."""
    z = logits.float()
    values, index = z.topk(3, dim=1)
    rows = torch.arange(z.shape[0], device=z.device)
    y_first = index[:, 0] == target
    other = torch.where(y_first, index[:, 1], index[:, 0])
    n = z[rows, target] - z[rows, other]
    d = values[:, 0] - values[:, 2] + 1e-12
    a, b = 1 / d, n / d / d
    dz = torch.zeros_like(z)
    dz.scatter_add_(1, torch.stack([target, other, index[:, 0], index[:, 2]], 1),
                    torch.stack([-a, a, b, -b], 1))
    return -n / d, dz.to(logits.dtype)


def projection_eager(points, w, b):
    """The reference AutoAttack's Linf projection (fab_projections.projection_linf), restated."""
    from cwr_fast import reference
    return reference.hyperplane_projection_linf(points, w, b)


def ce_autograd_eager(logits, target, temperature: float):
    """What training otherwise runs: F.cross_entropy forward and an autograd backward."""
    return F.cross_entropy(logits / temperature, target)


def margin_autograd_eager(logits, target):
    z_true = logits.gather(1, target[:, None]).squeeze(1)
    z_other = logits.scatter(1, target[:, None], float("-inf")).max(dim=1).values
    return (z_other - z_true).mean()


def linf_query_eager(x: Tensor, x_best: Tensor, eps: float, side: int) -> Tensor:
    """The Square Attack's Linf query as separate PyTorch ops (the attack's code before the fused op)."""
    m, c, h, w = x.shape
    top = (torch.rand(m, device=x.device) * (h - side)).long()
    left = (torch.rand(m, device=x.device) * (w - side)).long()
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)
    window = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    up = torch.rand((m, c, 1, 1), device=x.device) >= 0.5
    return torch.where(window, torch.clamp(x + torch.where(up, eps, -eps), 0.0, 1.0), x_best)


_COMPILED = {fn.__name__: torch.compile(fn, dynamic=False)
             for fn in (linf_step_eager, l2_step_eager, ce_manual, margin_manual, dlr_manual,
                        projection_eager, ce_autograd_eager, margin_autograd_eager, linf_query_eager)}


# ---- inputs (kept between the variants of one group) ----------------------------------------------

@functools.lru_cache(maxsize=1)
def step_inputs(shape, device):
    gen = torch.Generator(device=device).manual_seed(0)
    x_nat = torch.rand(shape, generator=gen, device=device, dtype=DTYPE)
    x_adv = (x_nat + (torch.rand(shape, generator=gen, device=device, dtype=DTYPE) * 2 - 1) * EPS).clamp_(0, 1)
    grad = torch.randn(shape, generator=gen, device=device, dtype=DTYPE)
    return x_adv, grad, x_nat


@functools.lru_cache(maxsize=1)
def loss_inputs(shape, device):
    gen = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(shape, generator=gen, device=device, dtype=DTYPE) * 3
    target = torch.randint(0, shape[1], (shape[0],), generator=gen, device=device)
    return logits, target


@functools.lru_cache(maxsize=1)
def copy_buffers(numel, device):
    src = torch.rand(numel, device=device, dtype=DTYPE)
    return src, torch.empty_like(src)


def require_fused_backend(device):
    if os.environ.get("CWR_FAST_BACKEND") == "reference":
        return
    backend = ops.backend()
    if not backend.startswith("compiled") or (device == "cuda" and "cuda" not in backend):
        pytest.fail(f"cwr_fast.ops.backend() is {backend!r}: the 'fused' variant would time the "
                    "pure-PyTorch reference; build the extension first", pytrace=False)


def run(benchmark, fn, *, device, op, size, variant, nbytes):
    """Warms up (compiles) outside the timing, then times fn, synchronising CUDA in each call."""
    benchmark.group = f"{op} {size} {str(DTYPE).replace('torch.', '')} {device}"
    benchmark.extra_info.update(op=op, size=size, dtype=str(DTYPE).replace("torch.", ""),
                                device=device, variant=variant, bytes=nbytes)
    if device == "cuda":
        inner = fn

        def fn():
            inner()
            torch.cuda.synchronize()
    if not benchmark.disabled:
        for _ in range(2):
            fn()
    benchmark(fn)


def _param_grid(sizes):
    return pytest.mark.parametrize(
        "device,size,variant",
        [(d, s, v) for d in DEVICES for s in sizes for v in VARIANTS],
        ids=[f"{d}-{s}-{v}" for d in DEVICES for s in sizes for v in VARIANTS])


# ---- steps ---------------------------------------------------------------------------------------

def _bench_step(benchmark, device, size, variant, op_name, fused, eager_name, alpha, eps):
    shape = STEP_SIZES[size]
    x_adv, grad, x_nat = step_inputs(shape, device)
    numel = x_adv.numel()
    nbytes = 4 * numel * x_adv.element_size()  # read x_adv, grad, x_nat; write x_adv
    if variant == "fused":
        require_fused_backend(device)
        fn = lambda: fused(x_adv, grad, x_nat, alpha, eps)  # noqa: E731
    elif variant == "eager":
        chain = globals()[eager_name]
        fn = lambda: chain(x_adv, grad, x_nat, alpha, eps)  # noqa: E731
    elif variant == "compile":
        chain = _COMPILED[eager_name]
        fn = lambda: chain(x_adv, grad, x_nat, alpha, eps)  # noqa: E731
    else:
        src, dst = copy_buffers(2 * numel, device)
        fn = lambda: dst.copy_(src)  # noqa: E731
    run(benchmark, fn, device=device, op=op_name, size=size, variant=variant, nbytes=nbytes)


@_param_grid(STEP_SIZES)
def test_linf_pgd_step(benchmark, device, size, variant):
    _bench_step(benchmark, device, size, variant, "linf_pgd_step_", ops.linf_pgd_step_,
                "linf_step_eager", ALPHA, EPS)


@_param_grid(STEP_SIZES)
def test_l2_pgd_step(benchmark, device, size, variant):
    _bench_step(benchmark, device, size, variant, "l2_pgd_step_", ops.l2_pgd_step_,
                "l2_step_eager", L2_ALPHA, L2_EPS)


# ---- losses --------------------------------------------------------------------------------------

def _bench_loss(benchmark, device, size, variant, op_name):
    shape = LOSS_SIZES[size]
    logits, target = loss_inputs(shape, device)
    nbytes = 2 * logits.numel() * logits.element_size()  # read logits, write dz (+ O(N) loss/target)
    ce = op_name == "temperature_ce_fwd_bwd"
    if variant == "fused":
        require_fused_backend(device)
        fn = (lambda: ops.temperature_ce_fwd_bwd(logits, target, TEMPERATURE)) if ce else \
            (lambda: ops.margin_loss_fwd_bwd(logits, target))
    elif variant == "eager":
        fn = (lambda: ce_eager(logits, target, TEMPERATURE)) if ce else (lambda: margin_eager(logits, target))
    elif variant == "compile":
        fn = (lambda: _COMPILED["ce_manual"](logits, target, TEMPERATURE)) if ce else \
            (lambda: _COMPILED["margin_manual"](logits, target))
    else:
        src, dst = copy_buffers(logits.numel(), device)
        fn = lambda: dst.copy_(src)  # noqa: E731
    run(benchmark, fn, device=device, op=op_name, size=size, variant=variant, nbytes=nbytes)


@_param_grid(LOSS_SIZES)
def test_temperature_ce_fwd_bwd(benchmark, device, size, variant):
    _bench_loss(benchmark, device, size, variant, "temperature_ce_fwd_bwd")


@_param_grid(LOSS_SIZES)
def test_margin_loss_fwd_bwd(benchmark, device, size, variant):
    _bench_loss(benchmark, device, size, variant, "margin_loss_fwd_bwd")


@_param_grid(LOSS_SIZES)
def test_dlr_loss_fwd_bwd(benchmark, device, size, variant):
    logits, target = loss_inputs(LOSS_SIZES[size], device)
    nbytes = 2 * logits.numel() * logits.element_size()
    fn = {"fused": lambda: ops.dlr_loss_fwd_bwd(logits, target),
          "eager": lambda: dlr_eager(logits, target),
          "compile": lambda: _COMPILED["dlr_manual"](logits, target)}.get(variant)
    if variant == "fused":
        require_fused_backend(device)
    if fn is None:
        src, dst = copy_buffers(logits.numel(), device)
        fn = lambda: dst.copy_(src)  # noqa: E731
    run(benchmark, fn, device=device, op="dlr_loss_fwd_bwd", size=size, variant=variant, nbytes=nbytes)


@functools.lru_cache(maxsize=1)
def projection_inputs(shape, device):
    gen = torch.Generator(device=device).manual_seed(0)
    points = torch.rand(shape, generator=gen, device=device, dtype=DTYPE)
    w = torch.randn(shape, generator=gen, device=device, dtype=DTYPE)
    b = (w * points).sum(dim=1) + torch.randn(shape[0], generator=gen, device=device, dtype=DTYPE) * 5
    return points, w, b


@_param_grid(PROJECTION_SIZES)
def test_hyperplane_projection_linf(benchmark, device, size, variant):
    points, w, b = projection_inputs(PROJECTION_SIZES[size], device)
    nbytes = 3 * points.numel() * points.element_size()  # read points and w, write d
    fn = {"fused": lambda: ops.hyperplane_projection_linf(points, w, b),
          "eager": lambda: projection_eager(points, w, b),
          "compile": lambda: _COMPILED["projection_eager"](points, w, b)}.get(variant)
    if variant == "fused":
        require_fused_backend(device)
    if fn is None:
        src, dst = copy_buffers(points.numel() * 3 // 2, device)
        fn = lambda: dst.copy_(src)  # noqa: E731
    run(benchmark, fn, device=device, op="hyperplane_projection_linf", size=size, variant=variant,
        nbytes=nbytes)


def _bench_autograd_loss(benchmark, device, size, variant, op_name):
    """loss(z).backward() as training calls it: the differentiable fused loss against eager
    F.cross_entropy (or the margin) and torch.compile of it, the gradient accumulated into z.grad."""
    logits, target = loss_inputs(LOSS_SIZES[size], device)
    z = logits.clone().requires_grad_(True)
    nbytes = 2 * logits.numel() * logits.element_size()
    ce = op_name == "temperature_cross_entropy"
    forward = {
        "fused": (lambda: ops.temperature_cross_entropy(z, target, TEMPERATURE)) if ce else
                 (lambda: ops.margin_loss(z, target)),
        "eager": (lambda: ce_autograd_eager(z, target, TEMPERATURE)) if ce else
                 (lambda: margin_autograd_eager(z, target)),
        "compile": (lambda: _COMPILED["ce_autograd_eager"](z, target, TEMPERATURE)) if ce else
                   (lambda: _COMPILED["margin_autograd_eager"](z, target)),
    }.get(variant)
    if variant == "fused":
        require_fused_backend(device)
    if forward is None:
        src, dst = copy_buffers(logits.numel(), device)
        fn = lambda: dst.copy_(src)  # noqa: E731
    else:
        def fn():
            z.grad = None
            forward().backward()
    run(benchmark, fn, device=device, op=op_name, size=size, variant=variant, nbytes=nbytes)


@_param_grid(LOSS_SIZES)
def test_temperature_cross_entropy_backward(benchmark, device, size, variant):
    _bench_autograd_loss(benchmark, device, size, variant, "temperature_cross_entropy")


@_param_grid(LOSS_SIZES)
def test_margin_loss_backward(benchmark, device, size, variant):
    _bench_autograd_loss(benchmark, device, size, variant, "margin_loss")


# ---- the Square Attack's Linf query ----------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def square_inputs(shape, device):
    gen = torch.Generator(device=device).manual_seed(0)
    x_nat = torch.rand(shape, generator=gen, device=device, dtype=DTYPE)
    signs = torch.rand(shape, generator=gen, device=device, dtype=DTYPE) < 0.5
    x_best = torch.clamp(x_nat + torch.where(signs, EPS, -EPS), 0, 1)
    return x_nat, x_best


@_param_grid(SQUARE_SIZES)
def test_square_linf_query(benchmark, device, size, variant):
    shape = SQUARE_SIZES[size]
    m, c, h, w = shape
    x_nat, x_best = square_inputs(shape, device)
    side = window_side(p_selection(0.8, SQUARE_QUERY), h, w, "linf")
    nbytes = 3 * x_nat.numel() * x_nat.element_size()  # read x_nat, x_best; write the query
    if variant == "fused":
        require_fused_backend(device)
        fn = lambda: ops.square_linf_query(x_nat, x_best, torch.rand(m, 2 + c, device=device), EPS, side)  # noqa: E731
    elif variant == "eager":
        fn = lambda: linf_query_eager(x_nat, x_best, EPS, side)  # noqa: E731
    elif variant == "compile":
        fn = lambda: _COMPILED["linf_query_eager"](x_nat, x_best, EPS, side)  # noqa: E731
    else:
        src, dst = copy_buffers(x_nat.numel() * 3 // 2, device)
        fn = lambda: dst.copy_(src)  # noqa: E731
    run(benchmark, fn, device=device, op="square_linf_query", size=size, variant=variant, nbytes=nbytes)
