"""Distributed tests of fastnorm.optim.Lion (specs/lion.md §6 item 17): gloo, 2 CPU processes.

* DDP with stochastic rounding for 10 steps: params bitwise equal across ranks (same seed and sr_step on every
  rank, same all-reduced grads, deterministic kernel).
* Shard(0) DTensor params (the FSDP2 layout) equal an unsharded run (the optimizer steps the local shards).
* FSDP2 ``fully_shard`` on CPU/gloo (where the installed torch supports it): training steps equal a
  single-process run bitwise (both ranks see the same batch, so the averaged grads are the local ones).
* CUDA: an FSDP2 ``fully_shard`` smoke test on one GPU.

Both CPU checks run in one spawn (process start-up dominates); each test reads its part of the result.
"""
import pytest
import torch
import torch.distributed as dist

import fastnorm  # noqa: F401
from _dist import WORLD, check, free_port, spawn_parts

HAS_OP = hasattr(torch.ops.fastnorm, "lion_step_")
pytestmark = [
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed+gloo"),
    pytest.mark.skipif(not HAS_OP, reason="this build has no torch.ops.fastnorm.lion_step_"),
]


def _ddp_sr(rank):
    from fastnorm.optim import Lion
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)  # same init on every rank (DDP also broadcasts it)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 8)).to(torch.bfloat16)
    ddp = DDP(model)
    opt = Lion(ddp.parameters(), lr=1e-3, weight_decay=0.1, stochastic_rounding=True)
    init = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(100 + rank)  # different data per rank
    for _ in range(10):
        x = torch.randn(32, 16, generator=gen).to(torch.bfloat16)
        y = torch.randn(32, 8, generator=gen).to(torch.bfloat16)
        opt.zero_grad()
        torch.nn.functional.mse_loss(ddp(x).float(), y.float()).backward()
        opt.step()
    assert int(opt.param_groups[0]["sr_step"]) == 10
    flat = torch.cat([p.detach().reshape(-1).view(torch.int16).to(torch.int32) for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(WORLD)]
    dist.all_gather(gathered, flat)
    assert torch.equal(gathered[0], gathered[1]), "params differ across ranks"
    moved = sum(int((p.detach() != q).sum()) for p, q in zip(model.parameters(), init))
    assert moved > 0, "SR training did not move any weight"
    return "ok"


def _dtensor_shard(rank):
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Shard, distribute_tensor
        mesh = init_device_mesh("cpu", (WORLD,))
        probe = distribute_tensor(torch.arange(4.0), mesh, [Shard(0)])
        assert probe.to_local().numel() == 2
    except Exception as e:  # the installed torch's DTensor API is unusable here
        return f"SKIP: DTensor on CPU/gloo unusable: {type(e).__name__}: {e}"
    from fastnorm.optim import Lion

    shapes = [(7, 5), (64,), (3, 4), (1, 9)]  # uneven shards, and an empty local shard on rank 1
    configs = [dict(dtype=torch.float32, kw=dict(weight_decay=0.1)),
               dict(dtype=torch.bfloat16, kw=dict(weight_decay=0.1, master_weights=True)),
               dict(dtype=torch.float32, kw=dict(decay_mode="decoupled", weight_decay=0.5, maximize=True))]
    for cfg in configs:
        dt = cfg["dtype"]
        gen = torch.Generator().manual_seed(7)
        full = [torch.randn(s, generator=gen).to(dt) for s in shapes]
        grads = [[torch.randn(s, generator=gen).to(dt) for s in shapes] for _ in range(3)]
        ref_ps = [torch.nn.Parameter(t.clone()) for t in full]
        sh_ps = [torch.nn.Parameter(distribute_tensor(t.clone(), mesh, [Shard(0)])) for t in full]
        ref = Lion(ref_ps, lr=1e-2, **cfg["kw"])
        opt = Lion(sh_ps, lr=1e-2, **cfg["kw"])
        for step in range(3):
            for p, q, g in zip(ref_ps, sh_ps, grads[step]):
                p.grad = g.clone()
                q.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
            ref.step()
            opt.step()
        for i, (p, q) in enumerate(zip(ref_ps, sh_ps)):
            got = q.detach().full_tensor()
            assert torch.equal(got, p.detach()), f"{cfg}: param {i} differs from the unsharded run"
            m = opt.state[q]["exp_avg"]
            assert type(m).__name__ == "DTensor", "exp_avg should stay a DTensor (sharded state)"
            assert torch.equal(m.full_tensor(), ref.state[p]["exp_avg"])
    return "ok"


def _fsdp2_cpu(rank):
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        mesh = init_device_mesh("cpu", (WORLD,))
    except Exception as e:
        return f"SKIP: FSDP2 on CPU/gloo unusable: {type(e).__name__}: {e}"
    from fastnorm.optim import Lion

    def build():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(16, 33), torch.nn.GELU(), torch.nn.Linear(33, 8))

    ref, model = build(), build()
    try:
        fully_shard(model, mesh=mesh)
    except Exception as e:
        return f"SKIP: fully_shard on CPU unsupported by this torch: {type(e).__name__}: {e}"
    ref_opt = Lion(ref.parameters(), lr=1e-2, weight_decay=0.1)
    opt = Lion(model.parameters(), lr=1e-2, weight_decay=0.1)
    gen = torch.Generator().manual_seed(5)  # the same batches on both ranks
    for _ in range(3):
        x, y = torch.randn(8, 16, generator=gen), torch.randn(8, 8, generator=gen)
        for m, o in ((ref, ref_opt), (model, opt)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    for i, (p, q) in enumerate(zip(ref.parameters(), model.parameters())):
        got = q.detach().full_tensor()
        # Lion moves by +-lr: a sign flip from a differently ordered grad reduction would show as 2*lr.
        assert torch.allclose(got, p.detach(), rtol=0, atol=1e-6), f"param {i}: {(got - p).abs().max()}"
    return "ok"


PARTS = [("ddp_sr", _ddp_sr), ("dtensor", _dtensor_shard), ("fsdp2_cpu", _fsdp2_cpu)]


@pytest.fixture(scope="module")
def dist_results(tmp_path_factory):
    return spawn_parts(PARTS, str(tmp_path_factory.mktemp("lion_dist")))


def test_ddp_stochastic_rounding_ranks_bitwise_equal(dist_results):
    check(dist_results["ddp_sr"])


def test_dtensor_shard0_equals_unsharded(dist_results):
    check(dist_results["dtensor"])


def test_fsdp2_cpu_equals_single_process(dist_results):
    check(dist_results["fsdp2_cpu"])


@pytest.mark.cuda
def test_fsdp2_fully_shard_smoke():
    """FSDP2 on one GPU (world size 1): params become DTensors; Lion steps their local shards."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        pytest.skip("torch.distributed.fsdp.fully_shard unavailable")
    from fastnorm.optim import Lion
    if not dist.is_initialized():
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 4)).cuda()
        ref = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 4)).cuda()
        ref.load_state_dict(model.state_dict())
        fully_shard(model)
        opt = Lion(model.parameters(), lr=1e-3, weight_decay=0.1)
        ropt = Lion(ref.parameters(), lr=1e-3, weight_decay=0.1)
        x = torch.randn(16, 32, device="cuda")
        for _ in range(3):
            for m, o in ((model, opt), (ref, ropt)):
                o.zero_grad()
                m(x).square().mean().backward()
                o.step()
        for p, q in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p.detach().full_tensor(), q.detach(), rtol=0, atol=0)
    finally:
        dist.destroy_process_group()
