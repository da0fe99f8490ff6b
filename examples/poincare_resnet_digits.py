"""Train a Poincaré ResNet on scikit-learn's bundled 8×8 digits and print the test accuracy (specs/poincare.md §7).

Setup: ``sklearn.datasets.load_digits`` (1797 images, 8×8×1, shipped inside scikit-learn: no download),
standardised with the training split's mean/std, stratified 80/20 split (``random_state=0``);
``PoincareResNet(depth=20, widths=(8, 16, 32), in_channels=1)`` (c = 0.1, identity init); Adam lr 1e-2,
weight decay 1e-4, cosine schedule over the epochs, batch 32, seed 0. Test accuracy is measured in eval mode
(running batch-norm statistics). ``--size 16`` upsamples the images bilinearly to 16×16.

    python examples/poincare_resnet_digits.py [--depth 20] [--widths 8 16 32] [--epochs 12] [--lr 1e-2]
                                              [--size 8] [--impl fastnorm|reference] [--device cpu] [--seed 0]
                                              [--threads N]
"""
import argparse
import math
import time

import torch
import torch.nn.functional as F

from fastnorm.nn import PoincareResNet


def load(size: int, device):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1)  # [N, 1, 8, 8], values 0..16
    y = torch.tensor(d.target, dtype=torch.long)
    idx = list(range(len(y)))
    tr, te = train_test_split(idx, test_size=0.2, stratify=d.target, random_state=0)
    tr, te = torch.tensor(tr), torch.tensor(te)
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x[tr].to(device), y[tr].to(device), x[te].to(device), y[te].to(device)


@torch.no_grad()
def accuracy(model, x, y, batch=256):
    model.eval()
    correct = 0
    for i in range(0, len(y), batch):
        correct += (model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
    model.train()
    return correct / len(y)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--widths", type=int, nargs=3, default=(8, 16, 32))
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--impl", choices=("fastnorm", "reference"), default="fastnorm")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    xtr, ytr, xte, yte = load(args.size, device)
    model = PoincareResNet(depth=args.depth, widths=tuple(args.widths), num_classes=10, in_channels=1,
                           impl=args.impl, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(ytr) / args.batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(args.seed)
    print(f"Poincaré ResNet-{args.depth} widths={tuple(args.widths)} impl={args.impl} on digits "
          f"{args.size}x{args.size} ({len(ytr)} train / {len(yte)} test), {torch.get_num_threads()} threads")
    t0 = time.perf_counter()
    acc = 0.0
    for epoch in range(args.epochs):
        perm = torch.randperm(len(ytr), generator=gen).to(device)
        total, count = 0.0, 0
        for i in range(0, len(ytr), args.batch):
            b = perm[i:i + args.batch]
            if len(b) < 2:  # batch norm needs two samples in training
                continue
            loss = F.cross_entropy(model(xtr[b]), ytr[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(b)
            count += len(b)
        acc = accuracy(model, xte, yte)
        print(f"epoch {epoch + 1:2d}  loss {total / count:.4f}  test acc {acc:.4f}  "
              f"time {time.perf_counter() - t0:.1f}s", flush=True)
    print(f"final test accuracy (eval mode, running statistics): {acc:.4f}")
    return acc


if __name__ == "__main__":
    main()
