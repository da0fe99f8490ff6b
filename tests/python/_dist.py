"""The launcher the gloo tests share (test_lion_dist.py, test_distributed.py): start WORLD CPU processes once
per test module, run named parts in each (a part is a picklable module-level function ``fn(rank) -> str``
returning "ok", "SKIP: why" or raising), and collect one result text per part and rank. Process start-up
dominates on a loaded machine, so a test module spawns once and each test reads its part's result."""
import os
import socket
import traceback

import pytest
import torch
import torch.distributed as dist

WORLD = 2


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write(outdir, rank, name, text):
    with open(os.path.join(outdir, f"{name}.{rank}"), "w") as f:
        f.write(text)


def _worker(rank, port, outdir, parts):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        for name, fn in parts:
            try:
                _write(outdir, rank, name, fn(rank))
            except Exception:
                _write(outdir, rank, name, "FAIL:\n" + traceback.format_exc())
            dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn_parts(parts, outdir):
    """Runs ``parts`` (a list of (name, fn)) in WORLD gloo processes; returns {name: [text of rank r]}."""
    import torch.multiprocessing as mp
    mp.spawn(_worker, args=(free_port(), outdir, list(parts)), nprocs=WORLD, join=True)
    res = {}
    for name, _ in parts:
        res[name] = []
        for r in range(WORLD):
            path = os.path.join(outdir, f"{name}.{r}")
            res[name].append(open(path).read() if os.path.exists(path) else "FAIL: no result")
    return res


def check(results):
    """Passes when every rank answered "ok"; skips on a "SKIP: ..." answer (an API this torch lacks)."""
    for r, text in enumerate(results):
        if text.startswith("SKIP"):
            pytest.skip(text[5:].strip())
        assert text == "ok", f"rank {r}: {text}"
