"""Smoke test of an installed fastnorm wheel (scripts/build_wheels.sh and cibuildwheel's test-command).

Run it from outside the source tree, in a venv where the wheel is installed:
    python wheel_smoke.py [--expect-version V] [--expect-cuda-module absent|present-unloaded|loaded-if-cuda-torch]
Checks that fastnorm imports from site-packages (not a source checkout), its metadata version, the state of
the CUDA module, and that ops run on a small CPU tensor and agree with torch (forward and backward). Exits
nonzero with a message naming the failed check.
"""
import argparse
import importlib.metadata
import importlib.util
import os
import sys


def fail(msg):
    print(f"wheel_smoke: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--expect-version")
    ap.add_argument("--expect-cuda-module", choices=["absent", "present-unloaded", "loaded-if-cuda-torch"])
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    import fastnorm
    import fastnorm.nn
    import fastnorm.optim

    pkg_dir = os.path.dirname(fastnorm.__file__)
    if "site-packages" not in pkg_dir:
        fail(f"fastnorm was imported from {pkg_dir}, not from an installed wheel")
    dist_version = importlib.metadata.version("fastnorm")
    if args.expect_version and dist_version != args.expect_version:
        fail(f"installed version {dist_version}, expected {args.expect_version}")
    if not dist_version.startswith(fastnorm.__version__):
        fail(f"metadata version {dist_version} does not start with fastnorm.__version__ {fastnorm.__version__}")

    from fastnorm import _build
    has_cuda_file = importlib.util.find_spec("fastnorm._C_cuda") is not None
    loaded = _build.loaded["_C_cuda"]
    mode = args.expect_cuda_module
    if mode == "absent" and (has_cuda_file or loaded):
        fail("the CPU wheel carries fastnorm._C_cuda")
    if mode in ("present-unloaded", "loaded-if-cuda-torch") and not has_cuda_file:
        fail("the CUDA wheel lacks fastnorm._C_cuda")
    if mode == "present-unloaded" and loaded:
        fail("fastnorm._C_cuda was loaded under a torch without CUDA")
    if mode == "loaded-if-cuda-torch" and bool(torch.version.cuda) != loaded:
        fail(f"fastnorm._C_cuda loaded={loaded} under torch CUDA={torch.version.cuda} "
             f"({_build.cuda_unavailable_reason})")

    torch.manual_seed(0)
    x = torch.randn(4, 64, dtype=torch.float32, requires_grad=True)
    w = torch.randn(64, dtype=torch.float32, requires_grad=True)
    b = torch.randn(64, dtype=torch.float32)
    y = fastnorm.layer_norm(x, (64,), w, b)
    y_ref = F.layer_norm(x, (64,), w, b)
    if not torch.allclose(y, y_ref, rtol=1e-4, atol=1e-5):
        fail(f"layer_norm differs from F.layer_norm by {(y - y_ref).abs().max().item():.3g}")
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    gx_ref, gw_ref = torch.autograd.grad(y_ref, (x, w), g)
    if not (torch.allclose(gx, gx_ref, rtol=1e-4, atol=1e-4) and torch.allclose(gw, gw_ref, rtol=1e-4, atol=1e-4)):
        fail("layer_norm backward differs from torch")
    r = fastnorm.nn.RMSNorm(64)(x.detach())
    r_ref = F.rms_norm(x.detach(), (64,), torch.ones(64))
    if not torch.allclose(r, r_ref, rtol=1e-4, atol=1e-5):
        fail("fastnorm.nn.RMSNorm differs from F.rms_norm")
    p = torch.nn.Parameter(torch.ones(8))
    opt = fastnorm.optim.Lion([p], lr=0.1)
    p.grad = torch.full((8,), 2.0)
    opt.step()  # first Lion step: p -= lr * sign(grad) (no weight decay)
    if not torch.allclose(p.detach(), torch.full((8,), 0.9)):
        fail(f"Lion step gave {p.detach().tolist()}, expected 0.9 everywhere")

    print(f"wheel_smoke: OK fastnorm {dist_version} from {pkg_dir}; torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}); _C_cuda file={has_cuda_file} loaded={loaded}; "
          f"CUDA archs={';'.join(_build.cuda_archs()) or 'none'}; ops: layer_norm fwd/bwd, RMSNorm, Lion")


if __name__ == "__main__":
    main()
