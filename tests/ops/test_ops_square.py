"""The Square Attack's fused Linf query loop, ops.square_linf_query and ops.square_accept_, against
cwr_fast.reference and against the attack's own PyTorch code in cwr_fast/attacks/square.py
(_linf_query given the same draws; _margin, torch.where and argmax for the accept step): bit for
bit in float32, within one rounding of the dtype otherwise; any memory layout; empty batches; bad
arguments raise errors that name them."""

from __future__ import annotations

import pytest
import torch
from conftest import devices
from helpers.ops import (FLOAT_DTYPES, SQUARE_EPS, as_layout, assert_close_ulp, square_accept_inputs,
                         square_query_inputs, unchanged)

from cwr_fast import ops, reference
from cwr_fast.attacks.square import _linf_query, _margin

pytestmark = pytest.mark.usefixtures("compiled_backend")

on_devices = pytest.mark.parametrize("device", devices())
ERRORS = (RuntimeError, ValueError, TypeError)
LAYOUTS = ["contiguous", "channels_last", "transposed", "sliced", "batch_sliced"]


def names(arg: str) -> str:
    """A regex matching the argument's name as a word."""
    return rf"(?<![A-Za-z0-9_]){arg}(?![A-Za-z0-9_])"


def query_tolerance(dtype) -> dict:
    """Exact in float32; one rounding of the dtype otherwise."""
    return dict(ulps=0.0 if dtype == torch.float32 else 1.0)


def run_query(x_nat, x_best, u, eps, side, what=""):
    """The op against the reference (on contiguous copies); inputs untouched; output layout that of
    empty_like(x_best)."""
    before = [t.clone() for t in (x_nat, x_best, u)]
    out = ops.square_linf_query(x_nat, x_best, u, eps, side)
    assert all(unchanged(t, t0) for t, t0 in zip((x_nat, x_best, u), before)), "an input was modified"
    expected = reference.square_linf_query(x_nat.contiguous(), x_best.contiguous(), u.contiguous(), eps, side)
    assert out.stride() == torch.empty_like(x_best).stride(), f"{what}: not x_best's memory layout"
    assert_close_ulp(out, expected, what=f"square_linf_query {what} side={side}", **query_tolerance(x_best.dtype))
    return out


# ---- square_linf_query -------------------------------------------------------------------------

@on_devices
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape, side", [((6, 3, 8, 8), 3), ((5, 1, 7, 5), 2), ((4, 3, 6, 6), 1),
                                         ((4, 2, 6, 9), 6), ((3, 3, 32, 32), 29)], ids=str)
def test_query_matches_reference(shape, side, dtype, device):
    x_nat, x_best, u = square_query_inputs(shape, dtype, device, seed=side)
    out = run_query(x_nat, x_best, u, SQUARE_EPS, side, what=f"{shape} {dtype}")
    assert out.dtype == dtype and out.device == x_best.device


@on_devices
@pytest.mark.parametrize("best_layout", LAYOUTS)
@pytest.mark.parametrize("nat_layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_query_layouts(nat_layout, best_layout, dtype, device):
    x_nat, x_best, u = square_query_inputs((5, 3, 7, 6), dtype, device, seed=3)
    x_nat, x_best = as_layout(x_nat, nat_layout), as_layout(x_best, best_layout)
    out = run_query(x_nat, x_best, as_layout(u, "transposed"), SQUARE_EPS, 4,
                    what=f"x_nat {nat_layout}, x_best {best_layout}")
    if best_layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


@on_devices
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(16, 3, 32, 32), (9, 1, 28, 28)], ids=str)
def test_query_is_the_attacks_linf_query(shape, channels_last, device):
    """The attack's query (square._linf_query) is the op on one draw [m, 2 + c] per query: bit for
    bit the reference formula given that draw, at every side the schedule of p uses."""
    from cwr_fast.attacks.square import p_selection, window_side

    m, c, h, w = shape
    x_nat, x_best, _ = square_query_inputs(shape, torch.float32, device, seed=7)
    if channels_last:
        x_nat, x_best = as_layout(x_nat, "channels_last"), as_layout(x_best, "channels_last")
    sides = sorted({window_side(p_selection(0.8, q), h, w, "linf") for q in (0, 20, 100, 300, 700, 9000)})
    for seed, side in enumerate(sides):
        torch.manual_seed(seed)
        out = _linf_query(x_nat, x_best, SQUARE_EPS, side)
        torch.manual_seed(seed)
        u = torch.rand(m, 2 + c, device=device)
        expected = reference.square_linf_query(x_nat, x_best, u, SQUARE_EPS, side)
        assert out.dtype == expected.dtype == torch.float32
        assert out.stride() == x_best.stride(), "the query keeps x_best's memory layout"
        assert torch.equal(out, expected), f"side {side}: differs from the reference formula"


@on_devices
def test_query_full_window_and_edges(device):
    """side = H = W: every pixel is in the window, so out = clamp(x_nat +- eps, 0, 1) for any draw."""
    x_nat, x_best, u = square_query_inputs((6, 3, 5, 5), torch.float32, device, seed=11)
    out = run_query(x_nat, x_best, u, SQUARE_EPS, 5, what="side = H")
    sign = torch.where(u[:, 2:] >= 0.5, 1.0, -1.0)[:, :, None, None]
    assert torch.equal(out, torch.clamp(x_nat + sign * SQUARE_EPS, 0.0, 1.0))
    # u = 1.0 exactly (allowed): the window ends at the last row and column
    u1 = torch.ones_like(u)
    out = run_query(x_nat, x_best, u1, SQUARE_EPS, 2, what="u = 1")
    assert torch.equal(out[:, :, :3], x_best[:, :, :3]) and torch.equal(out[:, :, :, :3], x_best[:, :, :, :3])
    assert not torch.equal(out[:, :, 3:, 3:], x_best[:, :, 3:, 3:])


@on_devices
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_query_empty_batch(dtype, device):
    x_nat, x_best, u = square_query_inputs((3, 3, 4, 4), dtype, device)
    out = ops.square_linf_query(x_nat[:0], as_layout(x_best[:0], "channels_last"), u[:0], SQUARE_EPS, 2)
    assert out.shape == (0, 3, 4, 4) and out.dtype == dtype


def query_args(device):
    x_nat, x_best, u = square_query_inputs((4, 3, 6, 6), torch.float32, device)
    return x_nat, x_best, u, SQUARE_EPS, 3


QUERY_CASES = {
    # case: (argument named in the message, function of the clean arguments -> call args)
    "integer_x_nat": ("x_nat", lambda n, b, u, e, s: ((n * 255).to(torch.uint8), (b * 255).to(torch.uint8), u, e, s)),
    "x_nat_3d": ("x_nat", lambda n, b, u, e, s: (n[0], b[0], u, e, s)),
    "x_best_dtype": ("x_best", lambda n, b, u, e, s: (n, b.double(), u, e, s)),
    "x_best_shape": ("x_best", lambda n, b, u, e, s: (n, b[:, :, :5], u, e, s)),
    "x_best_broadcastable": ("x_best", lambda n, b, u, e, s: (n, b[:1], u, e, s)),
    "u_dtype": ("u", lambda n, b, u, e, s: (n, b, u.double(), e, s)),
    "u_too_few_columns": ("u", lambda n, b, u, e, s: (n, b, u[:, :4], e, s)),
    "u_rows": ("u", lambda n, b, u, e, s: (n, b, u[:3], e, s)),
    "u_1d": ("u", lambda n, b, u, e, s: (n, b, u[:, 0], e, s)),
    "negative_eps": ("eps", lambda n, b, u, e, s: (n, b, u, -0.1, s)),
    "nan_eps": ("eps", lambda n, b, u, e, s: (n, b, u, float("nan"), s)),
    "side_0": ("side", lambda n, b, u, e, s: (n, b, u, e, 0)),
    "side_too_large": ("side", lambda n, b, u, e, s: (n, b, u, e, 7)),
}
CPU_ONLY_QUERY_CASES = {  # the values of u are checked on the CPU only (no host sync on CUDA)
    "u_negative": ("u", lambda n, b, u, e, s: (n, b, u - 0.5, e, s)),
    "u_above_1": ("u", lambda n, b, u, e, s: (n, b, u + 0.5, e, s)),
    "u_nan": ("u", lambda n, b, u, e, s: (n, b, torch.full_like(u, float("nan")), e, s)),
}


@on_devices
@pytest.mark.usefixtures("validating_backend")
@pytest.mark.parametrize("case", list(QUERY_CASES) + list(CPU_ONLY_QUERY_CASES))
def test_query_bad_arguments(case, device):
    if case in CPU_ONLY_QUERY_CASES and device != "cpu":
        pytest.skip("the values of u are validated on the CPU only")
    arg, make = {**QUERY_CASES, **CPU_ONLY_QUERY_CASES}[case]
    with pytest.raises(ERRORS, match=names(arg)):
        ops.square_linf_query(*make(*query_args(device)))


@pytest.mark.cuda
@pytest.mark.usefixtures("validating_backend")
def test_query_arguments_on_two_devices():
    x_nat, x_best, u, eps, side = query_args("cuda")
    with pytest.raises(RuntimeError, match=names("u")):
        ops.square_linf_query(x_nat, x_best, u.cpu(), eps, side)
    with pytest.raises(RuntimeError, match=names("x_best")):
        ops.square_linf_query(x_nat, x_best.cpu(), u, eps, side)


@pytest.mark.cuda
def test_query_window_is_clamped_on_cuda():
    """CUDA does not check u's values: a draw outside [0, 1] still gives a window inside the image
    (the CPU raises instead)."""
    x_nat, x_best, u, eps, _ = query_args("cuda")
    u = torch.cat([torch.tensor([[-3.0, 7.0]], device="cuda").expand(4, 2), u[:, 2:]], dim=1)
    out = ops.square_linf_query(x_nat, x_best, u, eps, 2)
    inside = torch.zeros(6, 6, dtype=torch.bool, device="cuda")
    inside[:2, 4:] = True
    assert torch.equal(out[:, :, ~inside], x_best[:, :, ~inside])
    torch.cuda.synchronize()


# ---- square_accept_ ------------------------------------------------------------------------------

def attack_accept(x_best, margin_best, x_new, logits, y):
    """The attack's accept step (square.py): _margin, torch.where and argmax, on copies."""
    margin = _margin(logits, y)
    better = margin < margin_best
    return (torch.where(better[:, None, None, None], x_new, x_best), torch.where(better, margin, margin_best),
            logits.argmax(dim=1))


def run_accept(x_best, margin_best, x_new, logits, y, what=""):
    """The op in place against the attack's accept step and the reference: bit for bit."""
    expected = attack_accept(x_best.clone(), margin_best.clone(), x_new, logits, y)
    ref_x, ref_best = x_best.contiguous().clone(), margin_best.contiguous().clone()
    ref_pred = reference.square_accept_(ref_x, ref_best, x_new.contiguous(), logits.contiguous(), y)
    inputs_before = [t.clone() for t in (x_new, logits, y)]
    ptrs, versions = (x_best.data_ptr(), margin_best.data_ptr()), (x_best._version, margin_best._version)
    pred = ops.square_accept_(x_best, margin_best, x_new, logits, y)
    assert (x_best.data_ptr(), margin_best.data_ptr()) == ptrs, f"{what}: not in place"
    assert x_best._version > versions[0] and margin_best._version > versions[1], \
        f"{what}: the version counters of the mutated tensors were not bumped"
    assert all(unchanged(t, t0) for t, t0 in zip((x_new, logits, y), inputs_before)), \
        f"{what}: an input was modified"
    assert pred.dtype == torch.int64 and pred.device == logits.device
    for got, want, name in zip((x_best, margin_best, pred), expected, ("x_best", "margin_best", "pred")):
        assert unchanged(got, want), f"square_accept_ {what}: {name} differs from the attack's accept step"
    for got, want, name in zip((x_best, margin_best, pred), (ref_x, ref_best, ref_pred),
                               ("x_best", "margin_best", "pred")):
        assert unchanged(got, want), f"square_accept_ {what}: {name} differs from the reference"
    return pred


@on_devices
@pytest.mark.parametrize("logit_dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("image_dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("k", [1, 2, 10, 1000])
def test_accept_matches_attack(k, image_dtype, logit_dtype, device):
    args = square_accept_inputs((37, 3, 5, 4), k, image_dtype, logit_dtype, device, seed=k)
    run_accept(*args, what=f"K={k} images {image_dtype} logits {logit_dtype}")


@on_devices
@pytest.mark.parametrize("best_layout, new_layout", [("channels_last", "contiguous"),
                                                     ("contiguous", "channels_last"),
                                                     ("channels_last", "channels_last"),
                                                     ("batch_sliced", "channels_last"),
                                                     ("sliced", "transposed")])
def test_accept_layouts(best_layout, new_layout, device):
    x_best, best, x_new, logits, y = square_accept_inputs((20, 3, 6, 5), 10, torch.float32, torch.float32,
                                                          device, seed=2)
    margin_buffer = torch.zeros(20, 2, device=device)
    margin_buffer[:, 1] = best
    run_accept(as_layout(x_best, best_layout), margin_buffer[:, 1], as_layout(x_new, new_layout),
               as_layout(logits, "transposed"), y, what=f"x_best {best_layout}, x_new {new_layout}")


@on_devices
def test_accept_nan_ties_and_single_class(device):
    """NaN logits win the arg-max and make the margin NaN (never accepted); ties go to the first
    index; a single class has margin +inf; a NaN margin_best never accepts."""
    x_best, best, x_new, logits, y = square_accept_inputs((8, 1, 3, 3), 5, torch.float32, torch.float32, device)
    logits[0] = torch.tensor([1.0, 3.0, 3.0, 0.0, 3.0])
    logits[1, 2] = float("nan")
    logits[2, 3] = float("nan")
    y[2] = 3  # only z_y is NaN: margin NaN, pred 3
    logits[3] = float("-inf")
    best[4] = float("nan")
    best[0] = float("inf")
    pred = run_accept(x_best, best, x_new, logits, y, what="NaN and ties")
    assert pred[0].item() == 1 and pred[1].item() == 2 and pred[2].item() == 3
    x_best, best, x_new, logits, y = square_accept_inputs((6, 2, 3, 3), 1, torch.float32, torch.float32, device)
    best.fill_(float("inf"))
    before = x_best.clone()
    pred = run_accept(x_best, best, x_new, logits, y, what="K = 1")
    assert torch.equal(pred, torch.zeros_like(pred)) and torch.equal(x_best, before)


@on_devices
def test_accept_empty_batch_and_self_copy(device):
    x_best, best, x_new, logits, y = square_accept_inputs((5, 3, 4, 4), 10, torch.float32, torch.float32, device)
    pred = ops.square_accept_(x_best[:0], best[:0], x_new[:0], logits[:0], y[:0])
    assert pred.shape == (0,) and pred.dtype == torch.int64
    run_accept(x_best, best, x_best, logits, y, what="x_new is x_best")


@on_devices
def test_query_loop_matches_the_attack(device):
    """A few queries of the Linf loop with a linear model: the fused query and accept step leave the
    same x_best and margins as the eager loop (reference query, margin, torch.where), given the
    same draws."""
    gen = torch.Generator().manual_seed(5)
    model = torch.nn.Linear(3 * 8 * 8, 10).to(device)
    with torch.no_grad():
        model.weight.copy_(torch.randn(10, 3 * 8 * 8, generator=gen))
    x, _, _ = square_query_inputs((12, 3, 8, 8), torch.float32, device, seed=5)
    y = torch.randint(0, 10, (12,), generator=gen).to(device)
    logits_of = lambda images: model(images.flatten(1))  # noqa: E731
    with torch.no_grad():
        x_best = torch.clamp(x + SQUARE_EPS, 0, 1)
        best = _margin(logits_of(x_best), y)
        fused_x, fused_best = x_best.clone(), best.clone()
        for q, side in enumerate([6, 6, 4, 3, 3, 2, 1, 1]):
            u = torch.rand(12, 2 + 3, generator=gen).to(device)
            x_new = reference.square_linf_query(x, x_best, u, SQUARE_EPS, side)
            margin = _margin(logits_of(x_new), y)
            better = margin < best
            x_best = torch.where(better[:, None, None, None], x_new, x_best)
            best = torch.where(better, margin, best)

            f_new = ops.square_linf_query(x, fused_x, u, SQUARE_EPS, side)
            ops.square_accept_(fused_x, fused_best, f_new, logits_of(f_new), y)
            assert torch.equal(fused_x, x_best) and torch.equal(fused_best, best), f"query {q}"


ACCEPT_CASES = {
    # case: (argument named in the message, function of the clean arguments -> call args)
    "x_new_shape": ("x_new", lambda xb, mb, xn, z, y: (xb, mb, xn[:, :2], z, y)),
    "x_new_dtype": ("x_new", lambda xb, mb, xn, z, y: (xb, mb, xn.half(), z, y)),
    "x_best_3d": ("x_best", lambda xb, mb, xn, z, y: (xb[0], mb, xn[0], z, y)),
    "integer_x_best": ("x_best", lambda xb, mb, xn, z, y: (xb.long(), mb, xn.long(), z, y)),
    "x_best_expanded": ("x_best", lambda xb, mb, xn, z, y: (xb[:1].expand_as(xb), mb, xn, z, y)),
    "logits_rows": ("logits", lambda xb, mb, xn, z, y: (xb, mb, xn, z[:3], y)),
    "logits_1d": ("logits", lambda xb, mb, xn, z, y: (xb, mb, xn, z[:, 0], y)),
    "logits_no_class": ("logits", lambda xb, mb, xn, z, y: (xb, mb, xn, z[:, :0], y)),
    "integer_logits": ("logits", lambda xb, mb, xn, z, y: (xb, mb, xn, z.long(), y)),
    "y_dtype": ("y", lambda xb, mb, xn, z, y: (xb, mb, xn, z, y.int())),
    "y_shape": ("y", lambda xb, mb, xn, z, y: (xb, mb, xn, z, y[:2])),
    "margin_best_dtype": ("margin_best", lambda xb, mb, xn, z, y: (xb, mb.double(), xn, z, y)),
    "margin_best_shape": ("margin_best", lambda xb, mb, xn, z, y: (xb, mb[:, None], xn, z, y)),
    "margin_best_expanded": ("margin_best", lambda xb, mb, xn, z, y: (xb, mb[:1].expand(4), xn, z, y)),
}
CPU_ONLY_ACCEPT_CASES = {  # the CUDA kernel asserts on the device instead
    "y_out_of_range": ("y", lambda xb, mb, xn, z, y: (xb, mb, xn, z, torch.tensor([0, 1, 10, 2]))),
    "y_negative": ("y", lambda xb, mb, xn, z, y: (xb, mb, xn, z, torch.tensor([0, -1, 1, 2]))),
}


@on_devices
@pytest.mark.usefixtures("validating_backend")
@pytest.mark.parametrize("case", list(ACCEPT_CASES) + list(CPU_ONLY_ACCEPT_CASES))
def test_accept_bad_arguments(case, device):
    if case in CPU_ONLY_ACCEPT_CASES and device != "cpu":
        pytest.skip("y's values are validated on the CPU only")
    arg, make = {**ACCEPT_CASES, **CPU_ONLY_ACCEPT_CASES}[case]
    x_best, best, x_new, logits, y = square_accept_inputs((4, 3, 4, 4), 10, torch.float32, torch.float32, device)
    best.fill_(float("inf"))
    before = x_best.clone(), best.clone()
    with pytest.raises(ERRORS, match=names(arg)):
        ops.square_accept_(*make(x_best, best, x_new, logits, y))
    assert torch.equal(x_best, before[0]) and torch.equal(best, before[1]), "modified by a call that failed"


@pytest.mark.cuda
@pytest.mark.usefixtures("validating_backend")
def test_accept_arguments_on_two_devices():
    x_best, best, x_new, logits, y = square_accept_inputs((4, 3, 4, 4), 10, torch.float32, torch.float32, "cuda")
    for name, args in {"y": (x_best, best, x_new, logits, y.cpu()),
                       "margin_best": (x_best, best.cpu(), x_new, logits, y),
                       "logits": (x_best, best, x_new, logits.cpu(), y),
                       "x_new": (x_best, best, x_new.cpu(), logits, y)}.items():
        with pytest.raises(RuntimeError, match=names(name)):
            ops.square_accept_(*args)


@on_devices
def test_square_ops_refuse_grad(device):
    """Not differentiable (both backends): with grad mode on, an input that requires grad is refused;
    under torch.no_grad() the ops run and give tensors that do not require grad."""
    x_nat, x_best, u = square_query_inputs((3, 3, 5, 5), torch.float32, device)
    x_best.requires_grad_(True)
    with pytest.raises(RuntimeError, match="x_best requires grad, but the Square Attack's ops are not differentiable"):
        ops.square_linf_query(x_nat, x_best, u, SQUARE_EPS, 2)
    with torch.no_grad():
        assert not ops.square_linf_query(x_nat, x_best, u, SQUARE_EPS, 2).requires_grad
    x_best, best, x_new, logits, y = square_accept_inputs((4, 3, 4, 4), 10, torch.float32, torch.float32, device)
    before = x_best.clone(), best.clone()
    logits.requires_grad_(True)
    with pytest.raises(RuntimeError, match="logits requires grad, but the Square Attack's ops are not differentiable"):
        ops.square_accept_(x_best, best, x_new, logits, y)
    assert torch.equal(x_best, before[0]) and torch.equal(best, before[1])
    with torch.no_grad():
        assert not ops.square_accept_(x_best, best, x_new, logits, y).requires_grad
