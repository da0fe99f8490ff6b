"""The norm modules and Lion under DDP and FSDP2 (``fully_shard``) on 2 CPU processes (gloo) equal one process
(issue 8). test_lion_dist.py covers Lion alone; this file trains a small model built from every norm module of
fastnorm.nn with fastnorm's Lion, 3 steps, each rank on its own shard of the global batch.

What "equal to one process" means, module by module:

* Per-sample modules (LayerNorm, RMSNorm, LlamaRMSNorm, FusedAddLayerNorm, FusedAddRMSNorm, CRMSNorm,
  MixLNBlock pre and post, EvoNorm2dS0 (its group statistics are per sample), AlphaBatchNorm2d with alpha = 1
  (source statistics only)): DDP / FSDP2 on two shards equal ONE process training on the WHOLE batch.
  Checked in float64 (``*_fullbatch_f64``): the whole-batch run sums the weight gradients of both shards in
  one GEMM/reduction while the distributed run sums two per-shard partial sums, so the results agree to
  rounding only: losses and gradients to a normwise relative 1e-12, parameters after 3 Lion steps to 1e-12
  absolute (Lion moves every weight by +-lr per step, so a sign flip would show as 2*lr = 2e-2, not 1e-12).
* Batch-statistic modules (PowerNorm, UnifiedNorm, AlphaBatchNorm2d with alpha < 1, EvoNorm2dB0 in training):
  none of them synchronises statistics across processes (there is no SyncBatchNorm-like mode), so under DDP
  and FSDP2 each rank normalises with its own shard's statistics and updates its own running state. The
  single-process equivalent is one replica of the model per rank in one process, each fed its rank's shard,
  gradients averaged ((g0 + g1) / 2, which DDP's (g0/2) + (g1/2) equals exactly), one Lion step, parameters
  copied to every replica. Buffers: DDP (broadcast_buffers=True, the default) overwrites every rank's buffers
  with rank 0's at each forward, so the replicas start each step from replica 0's buffers; FSDP2 never touches
  buffers, so each replica keeps its own. With the same per-shard arithmetic on both sides this is checked
  BITWISE in float32 (``ddp`` and ``fsdp2``): every rank's loss, the averaged gradients of every step, the
  parameters after 3 steps and every buffer (running statistics, PowerNorm's ema_gz, UN's windows, step
  counters). The same test asserts that the whole-batch loss differs, i.e. the modules really are not
  synchronised.
"""
import pytest
import torch
import torch.distributed as dist
from torch import nn

import fastnorm  # noqa: F401
from _dist import WORLD, check, spawn_parts

pytestmark = [
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed+gloo"),
    pytest.mark.skipif(not hasattr(torch.ops.fastnorm, "lion_step_"), reason="this build has no Lion op"),
]

C, T, OUT, B_RANK, STEPS = 16, 6, 4, 4, 3
LION = dict(lr=1e-2, weight_decay=0.1)


class NormNet(nn.Module):
    """A sequence branch [B, T, C] through every sequence norm and an image branch [B, 3, 6, 6] through the 2-D
    norms; ``batch_stats=False`` keeps only the per-sample ones (alpha-BN then uses alpha = 1)."""

    def __init__(self, batch_stats: bool):
        super().__init__()
        import fastnorm.nn as fnn
        mlp = lambda: nn.Sequential(nn.Linear(C, 2 * C), nn.SiLU(), nn.Linear(2 * C, C))  # noqa: E731
        self.inp = nn.Linear(C, C)
        self.ln = fnn.LayerNorm(C)
        self.rms = fnn.RMSNorm(C, eps=1e-6, bias=True)
        self.llama = fnn.LlamaRMSNorm(C)
        self.fln = fnn.FusedAddLayerNorm(C)
        self.frms = fnn.FusedAddRMSNorm(C, eps=1e-6)
        self.crms = fnn.CRMSNorm(C - 1, elementwise_affine=True)
        self.pre = fnn.MixLNBlock("pre", C, nn.Linear(C, C), mlp())
        self.post = fnn.MixLNBlock("post", C, nn.Linear(C, C), mlp(), norm="layer")
        self.batch_stats = batch_stats
        if batch_stats:
            self.power = fnn.PowerNorm(C, warmup_iters=2, batch_first=True, group_num=2)
            self.unified = fnn.UnifiedNorm(C, window_size=2, warmup_iters=1, compensation_start=2)
            self.b0 = fnn.EvoNorm2dB0(8)
        self.seq_head = nn.Linear(C, OUT)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.abn = fnn.AlphaBatchNorm2d(8, alpha=0.5 if batch_stats else 1.0)
        self.s0 = fnn.EvoNorm2dS0(8, groups=4)
        self.img_head = nn.Linear(8, OUT)

    def forward(self, x, img):
        h = torch.tanh(self.inp(x))
        h = self.llama(self.rms(self.ln(h)))
        y, r = self.fln(torch.tanh(h), x)
        y, r = self.frms(y, r)
        z = r - r.mean(-1, keepdim=True)  # CRMSNorm sees the first C-1 coordinates of a zero-mean vector
        c = self.crms(z[..., :-1])
        h = torch.cat([c, -c.sum(-1, keepdim=True)], dim=-1) + y
        h = self.post(self.pre(h))
        if self.batch_stats:
            h = self.unified(self.power(h))
        g = self.abn(self.conv(img))
        if self.batch_stats:
            g = self.b0(g)
        g = self.s0(g)
        return self.seq_head(h).mean(1) + self.img_head(g.mean((2, 3)))


def build(batch_stats: bool, dtype=torch.float32) -> NormNet:
    torch.manual_seed(0)
    m = NormNet(batch_stats).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 1:  # norms' affine parameters (and biases) off their identity init
                p.add_(0.1 * torch.randn_like(p))
        m.abn.running_mean.normal_()
        m.abn.running_var.uniform_(0.5, 2.0)
    return m


def batches(dtype):
    """STEPS global batches of WORLD * B_RANK samples, the same on every rank; shard r is rows [r*B, (r+1)*B)."""
    g = torch.Generator().manual_seed(1234)
    n = WORLD * B_RANK
    return [(torch.randn(n, T, C, generator=g, dtype=dtype), torch.randn(n, 3, 6, 6, generator=g, dtype=dtype),
             torch.randn(n, OUT, generator=g, dtype=dtype)) for _ in range(STEPS)]


def shard(batch, r):
    return tuple(t[r * B_RANK:(r + 1) * B_RANK] for t in batch)


def loss_of(model, x, img, y):
    return torch.nn.functional.mse_loss(model(x, img), y)


def _full(t):
    return t.full_tensor() if type(t).__name__ == "DTensor" else t


def train_distributed(rank, model, params_of, data):
    """Each rank trains on its shard; returns (per-step local losses, per-step full averaged grads, full params,
    local buffers)."""
    from fastnorm.optim import Lion
    opt = Lion(params_of.parameters(), **LION)
    losses, grads = [], []
    for batch in data:
        opt.zero_grad()
        loss = loss_of(model, *shard(batch, rank))
        loss.backward()
        losses.append(loss.detach().clone())
        grads.append([_full(p.grad).detach().clone() for p in params_of.parameters()])
        opt.step()
    params = [_full(p.detach()).clone() for p in params_of.parameters()]
    return losses, grads, params, {k: v.clone() for k, v in params_of.named_buffers()}


def train_replicas(batch_stats, dtype, data, buffers):
    """The single-process equivalent of per-shard statistics: WORLD replicas, replica r fed shard r."""
    from fastnorm.optim import Lion
    reps = [build(batch_stats, dtype) for _ in range(WORLD)]
    opt = Lion(reps[0].parameters(), **LION)
    losses, grads = [], []
    for batch in data:
        if buffers == "rank0":  # DDP's broadcast_buffers: every rank starts the forward from rank 0's buffers
            with torch.no_grad():
                for rep in reps[1:]:
                    for b, b0 in zip(rep.buffers(), reps[0].buffers()):
                        b.copy_(b0)
        step_losses = []
        for r, rep in enumerate(reps):
            rep.zero_grad(set_to_none=True)
            loss = loss_of(rep, *shard(batch, r))
            loss.backward()
            step_losses.append(loss.detach().clone())
        for ps in zip(*(rep.parameters() for rep in reps)):
            g = ps[0].grad
            for p in ps[1:]:
                g = g + p.grad
            ps[0].grad = g / WORLD
        losses.append(step_losses)
        grads.append([p.grad.clone() for p in reps[0].parameters()])
        opt.step()
        with torch.no_grad():
            for rep in reps[1:]:
                for p, p0 in zip(rep.parameters(), reps[0].parameters()):
                    p.copy_(p0)
    return losses, grads, [p.detach().clone() for p in reps[0].parameters()], \
        [{k: v.clone() for k, v in rep.named_buffers()} for rep in reps]


def train_full_batch(batch_stats, dtype, data):
    from fastnorm.optim import Lion
    m = build(batch_stats, dtype)
    opt = Lion(m.parameters(), **LION)
    losses, grads = [], []
    for batch in data:
        opt.zero_grad()
        loss = loss_of(m, *batch)
        loss.backward()
        losses.append(loss.detach().clone())
        grads.append([p.grad.clone() for p in m.parameters()])
        opt.step()
    return losses, grads, [p.detach().clone() for p in m.parameters()]


def _names(model):
    return [n for n, _ in model.named_parameters()]


def _assert_bitwise(rank, names, got, want):
    losses, grads, params, buffers = got
    rlosses, rgrads, rparams, rbuffers = want
    for s in range(STEPS):
        assert torch.equal(losses[s], rlosses[s][rank]), f"step {s}: loss {losses[s]} vs {rlosses[s][rank]}"
        for n, a, b in zip(names, grads[s], rgrads[s]):
            assert torch.equal(a, b), f"step {s}: grad of {n} differs by {(a - b).abs().max()}"
    for n, a, b in zip(names, params, rparams):
        assert torch.equal(a, b), f"param {n} differs by {(a - b).abs().max()}"
    assert buffers.keys() == rbuffers[rank].keys()
    for k, v in buffers.items():
        assert torch.equal(v, rbuffers[rank][k]), f"buffer {k}: {v} vs {rbuffers[rank][k]}"


def _assert_state_moved(buffers):
    """The buffer comparisons mean something only if the training steps changed the state."""
    init = build(True).state_dict()
    for k in ("power.running_phi", "power.ema_gz", "unified.running_var", "unified.ema_gz", "unified.buffer_x2",
              "unified.buffer_gz", "b0.running_var"):
        assert not torch.equal(buffers[k], init[k]), f"{k} did not change in {STEPS} training steps"
    assert buffers["power.iters"].item() == STEPS and buffers["unified.iters"].item() == STEPS


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def _assert_close_full_batch(names, losses, grads, params, want):
    wlosses, wgrads, wparams = want
    for s in range(STEPS):
        glob = losses[s].clone()
        dist.all_reduce(glob)  # the global loss: the mean of the equal-size shards' mean losses
        glob /= WORLD
        assert _rel(glob, wlosses[s]) <= 1e-12, f"step {s}: loss {glob.item()} vs {wlosses[s].item()}"
        for n, a, b in zip(names, grads[s], wgrads[s]):
            assert _rel(a, b) <= 1e-12, f"step {s}: grad of {n}: rel err {_rel(a, b)}"
    for n, a, b in zip(names, params, wparams):
        assert (a - b).abs().max().item() <= 1e-12, f"param {n} differs by {(a - b).abs().max()}"


def _fsdp2_mesh():
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    return fully_shard, init_device_mesh("cpu", (WORLD,))


def _shard_model(model, fully_shard, mesh):
    for block in (model.pre, model.post):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


# ---- the parts run in every rank ----------------------------------------------------------------------------
def _ddp(rank):
    from torch.nn.parallel import DistributedDataParallel as DDP
    data = batches(torch.float32)
    model = build(True)
    got = train_distributed(rank, DDP(model), model, data)
    want = train_replicas(True, torch.float32, data, buffers="rank0")
    _assert_bitwise(rank, _names(model), got, want)
    _assert_state_moved(got[3])
    # the batch-statistic modules are not synchronised: the whole batch gives another loss
    full = loss_of(build(True), *data[0]).detach()
    local = got[0][0].clone()
    dist.all_reduce(local)
    assert _rel(local / WORLD, full) > 1e-4, "per-shard statistics should differ from whole-batch statistics"
    return "ok"


def _fsdp2(rank):
    try:
        fully_shard, mesh = _fsdp2_mesh()
    except Exception as e:
        return f"SKIP: FSDP2 on CPU/gloo unusable: {type(e).__name__}: {e}"
    data = batches(torch.float32)
    model = build(True)
    names = _names(model)
    got = train_distributed(rank, _shard_model(model, fully_shard, mesh), model, data)
    want = train_replicas(True, torch.float32, data, buffers="per_rank")
    _assert_bitwise(rank, names, got, want)
    _assert_state_moved(got[3])
    return "ok"


def _ddp_full_batch(rank):
    from torch.nn.parallel import DistributedDataParallel as DDP
    data = batches(torch.float64)
    model = build(False, torch.float64)
    losses, grads, params, _ = train_distributed(rank, DDP(model), model, data)
    _assert_close_full_batch(_names(model), losses, grads, params, train_full_batch(False, torch.float64, data))
    return "ok"


def _fsdp2_full_batch(rank):
    try:
        fully_shard, mesh = _fsdp2_mesh()
    except Exception as e:
        return f"SKIP: FSDP2 on CPU/gloo unusable: {type(e).__name__}: {e}"
    data = batches(torch.float64)
    model = build(False, torch.float64)
    names = _names(model)
    losses, grads, params, _ = train_distributed(rank, _shard_model(model, fully_shard, mesh), model, data)
    _assert_close_full_batch(names, losses, grads, params, train_full_batch(False, torch.float64, data))
    return "ok"


PARTS = [("ddp", _ddp), ("fsdp2", _fsdp2), ("ddp_fullbatch_f64", _ddp_full_batch),
         ("fsdp2_fullbatch_f64", _fsdp2_full_batch)]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return spawn_parts(PARTS, str(tmp_path_factory.mktemp("norm_dist")))


def test_ddp_per_shard_statistics_bitwise(results):
    """Every norm module + Lion under DDP == one process running one replica per rank's shard, bitwise."""
    check(results["ddp"])


def test_fsdp2_per_shard_statistics_bitwise(results):
    """The same under FSDP2 fully_shard (per-block and root), buffers kept per rank, bitwise."""
    check(results["fsdp2"])


def test_ddp_per_sample_norms_equal_full_batch_f64(results):
    """The per-sample norms + Lion under DDP == one process on the whole batch (float64, 1e-12)."""
    check(results["ddp_fullbatch_f64"])


def test_fsdp2_per_sample_norms_equal_full_batch_f64(results):
    check(results["fsdp2_fullbatch_f64"])
