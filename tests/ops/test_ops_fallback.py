"""The pure-PyTorch fallback: CWR_FAST_BACKEND=reference forces it, and a missing extension falls
back to it with exactly one warning. Both run in a fresh interpreter (the choice is made at import)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from conftest import REPO

OPS_SMOKE = textwrap.dedent("""
    import torch
    from cwr_fast import ops, reference
    x_nat = torch.rand(4, 3, 8, 8)
    g = torch.randn_like(x_nat)
    for step, ref in ((ops.linf_pgd_step_, reference.linf_pgd_step_),
                      (ops.l2_pgd_step_, reference.l2_pgd_step_)):
        x = x_nat.clone()
        assert step(x, g, x_nat, 0.1, torch.full((4,), 0.3)) is x
        assert torch.equal(x, ref(x_nat.clone(), g, x_nat, 0.1, torch.full((4,), 0.3)))
        assert not torch.equal(x, x_nat)
    z, y = torch.randn(5, 10, requires_grad=True), torch.randint(0, 10, (5,))
    loss, dz = ops.temperature_ce_fwd_bwd(z, y, 2.0)
    assert loss.shape == (5,) and dz.shape == (5, 10)
    loss, dz = ops.margin_loss_fwd_bwd(z, y, torch.ones(5))
    ops.temperature_cross_entropy(z, y, 2.0).backward()
    ops.margin_loss(z, y, reduction="sum").backward()
    loss, dz = ops.dlr_loss_fwd_bwd(z, y, (y + 1) % 10)
    assert loss.shape == (5,) and dz.shape == (5, 10)
    ops.dlr_loss(z, y).backward()
    assert z.grad is not None and z.grad.isfinite().all()
    x_best = x_nat.clone()
    x_new = ops.square_linf_query(x_nat, x_best, torch.rand(4, 5), 0.1, 3)
    assert x_new.shape == x_nat.shape and not torch.equal(x_new, x_best)
    pred = ops.square_accept_(x_best, torch.full((4,), float("inf")), x_new, torch.randn(4, 10),
                              torch.randint(0, 10, (4,)))
    assert pred.shape == (4,) and torch.equal(x_best, x_new)
    print("BACKEND", ops.backend())
""")

BLOCK_EXTENSION = textwrap.dedent("""
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name == "cwr_fast._C":
                raise ImportError("blocked by the test")
    sys.meta_path.insert(0, _Block())
""")


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), full_env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-W", "always::RuntimeWarning", "-c", code], cwd=REPO,
                          env=full_env, capture_output=True, text=True, timeout=300)


def test_forced_reference_backend():
    proc = run_python(OPS_SMOKE, CWR_FAST_BACKEND="reference")
    assert proc.returncode == 0, proc.stderr
    assert "BACKEND reference" in proc.stdout


def test_missing_extension_falls_back_with_one_warning():
    env = {k: v for k, v in os.environ.items() if k != "CWR_FAST_BACKEND"}
    proc = subprocess.run(
        [sys.executable, "-W", "always::RuntimeWarning", "-c", BLOCK_EXTENSION + OPS_SMOKE], cwd=REPO,
        env={**env, "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])},
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "BACKEND reference" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if "RuntimeWarning" in line]
    assert len(warnings) == 1, proc.stderr
    assert "compiled extension not available" in warnings[0] and "reference" in warnings[0]
