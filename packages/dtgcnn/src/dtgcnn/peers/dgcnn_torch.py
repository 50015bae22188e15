"""The reference DGCNN re-implemented faithfully in torch, serving `dtgcnn.bench` one training step at a time.

Peer: github.com/WangYueFt/dgcnn, file `pytorch/model.py` (commit f765b469a67730658ba554e97dc11723a7bab628):
`knn`, `get_graph_feature` and `DGCNN` (EdgeConv widths 64-64-128-256, emb_dims 1024, k 20, max + mean pooled
head 512-256), trained as its `main.py` trains by default (SGD, lr 0.1, momentum 0.9, weight decay 1e-4,
cross-entropy with label smoothing 0.2). Two changes to run beside dtgcnn at the same sizes: the input has
`in_channels` per point (xyz and normals, 6, where the peer reads xyz) so the first EdgeConv reads 2 x 6
channels, and the graph-feature index base lives on the input's device (the peer hard-codes CUDA).

Run as a child of the bench: it builds the model, prints "ready", then answers each line on stdin: `step` runs
one training step and prints its seconds, `flops` prints the counted FLOPs of one forward + backward per
sample, `memory` the peak resident memory in MiB, `quit` ends. The bench times its own step and a `step`
round trip alternately, so both run under the same load.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch
import torch.nn.functional as F  # noqa: N812 - the peer's spelling
from torch import nn


def knn(x: torch.Tensor, k: int) -> torch.Tensor:
    inner = -2 * torch.matmul(x.transpose(2, 1), x)
    xx = torch.sum(x**2, dim=1, keepdim=True)
    pairwise_distance = -xx - inner - xx.transpose(2, 1)
    return pairwise_distance.topk(k=k, dim=-1)[1]  # (batch_size, num_points, k)


def get_graph_feature(x: torch.Tensor, k: int = 20) -> torch.Tensor:
    batch_size, num_points = x.size(0), x.size(2)
    x = x.view(batch_size, -1, num_points)
    idx = knn(x, k=k)
    idx_base = torch.arange(0, batch_size, device=x.device).view(-1, 1, 1) * num_points
    idx = (idx + idx_base).view(-1)
    _, num_dims, _ = x.size()
    x = x.transpose(2, 1).contiguous()  # (batch_size, num_points, num_dims)
    feature = x.view(batch_size * num_points, -1)[idx, :]
    feature = feature.view(batch_size, num_points, k, num_dims)
    x = x.view(batch_size, num_points, 1, num_dims).repeat(1, 1, k, 1)
    return torch.cat((feature - x, x), dim=3).permute(0, 3, 1, 2).contiguous()


def _edge_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)
    )


class DGCNN(nn.Module):
    def __init__(self, k: int = 20, emb_dims: int = 1024, dropout: float = 0.5, output_channels: int = 40,
                 in_channels: int = 3):  # fmt: skip
        super().__init__()
        self.k = k
        self.conv1 = _edge_conv(2 * in_channels, 64)
        self.conv2 = _edge_conv(64 * 2, 64)
        self.conv3 = _edge_conv(64 * 2, 128)
        self.conv4 = _edge_conv(128 * 2, 256)
        self.conv5 = nn.Sequential(
            nn.Conv1d(512, emb_dims, kernel_size=1, bias=False), nn.BatchNorm1d(emb_dims), nn.LeakyReLU(0.2)
        )
        self.linear1 = nn.Linear(emb_dims * 2, 512, bias=False)
        self.bn6 = nn.BatchNorm1d(512)
        self.dp1 = nn.Dropout(p=dropout)
        self.linear2 = nn.Linear(512, 256)
        self.bn7 = nn.BatchNorm1d(256)
        self.dp2 = nn.Dropout(p=dropout)
        self.linear3 = nn.Linear(256, output_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, C, N]
        batch_size = x.size(0)
        x1 = self.conv1(get_graph_feature(x, k=self.k)).max(dim=-1, keepdim=False)[0]
        x2 = self.conv2(get_graph_feature(x1, k=self.k)).max(dim=-1, keepdim=False)[0]
        x3 = self.conv3(get_graph_feature(x2, k=self.k)).max(dim=-1, keepdim=False)[0]
        x4 = self.conv4(get_graph_feature(x3, k=self.k)).max(dim=-1, keepdim=False)[0]
        x = self.conv5(torch.cat((x1, x2, x3, x4), dim=1))
        x = torch.cat(
            (
                F.adaptive_max_pool1d(x, 1).view(batch_size, -1),
                F.adaptive_avg_pool1d(x, 1).view(batch_size, -1),
            ),
            1,
        )
        x = self.dp1(F.leaky_relu(self.bn6(self.linear1(x)), negative_slope=0.2))
        x = self.dp2(F.leaky_relu(self.bn7(self.linear2(x)), negative_slope=0.2))
        return self.linear3(x)


def cal_loss(pred: torch.Tensor, gold: torch.Tensor, smoothing: float = 0.2) -> torch.Tensor:
    """The peer's training loss: cross-entropy with label smoothing."""
    n_class = pred.size(1)
    one_hot = torch.zeros_like(pred).scatter(1, gold.view(-1, 1), 1)
    one_hot = one_hot * (1 - smoothing) + (1 - one_hot) * smoothing / (n_class - 1)
    return -(one_hot * F.log_softmax(pred, dim=1)).sum(dim=1).mean()


def serve(args: argparse.Namespace) -> None:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = DGCNN(
        k=args.k, emb_dims=args.emb_dims, output_channels=args.classes, in_channels=args.in_channels
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    pts = torch.randn(args.batch_size, 3, args.num_points, generator=gen)
    pts = pts / pts.norm(dim=1, keepdim=True)
    x = torch.cat([pts, pts], dim=1)[:, : args.in_channels]  # points on a sphere, normals = positions
    y = torch.arange(args.batch_size) % args.classes
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        cal_loss(model(x), y).backward()
        opt.step()

    print("ready", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "step":
            start = time.perf_counter()
            step()
            print(time.perf_counter() - start, flush=True)
        elif command == "flops":
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                cal_loss(model(x), y).backward()
            opt.zero_grad(set_to_none=True)
            print(counter.get_total_flops() / args.batch_size, flush=True)
        elif command == "memory":
            print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, flush=True)
        elif command == "quit":
            return
        else:
            print(f"unknown command {command!r}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-points", type=int, default=1024)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--emb-dims", type=int, default=1024)
    parser.add_argument("--in-channels", type=int, default=6)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    serve(parser.parse_args(argv))


if __name__ == "__main__":
    main()
