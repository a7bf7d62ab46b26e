"""FID-Inception: the Inception-v3 variant behind published FIDs, to load pytorch-fid's weights file.

Published FIDs (Heusel et al. 2017) come from the TensorFlow Inception graph of 2015-12-05, whose
weights pytorch-fid ships as ``pt_inception-2015-12-05-6726825d.pth``. That graph is torchvision's
Inception-v3 (Szegedy et al. 2016, "Rethinking the Inception Architecture", Fig. 5-7) with
three differences, reproduced here:

- the average pools inside the A, C and first E blocks do not count padding
  (``count_include_pad=False``), as TensorFlow's do not;
- the last E block pools with a max, not an average;
- 1008 output classes (the fc layer is kept only so that the file loads strictly).

Parameter names are torchvision's (``Mixed_5b.branch1x1.conv.weight``), so the weights file loads
with ``load_state_dict`` as it is. No torchvision needed: difflab's torch build runs without it.

    x (N, 3, H, W) in [-1, 1] --bilinear resize--> (N, 3, 299, 299)
      stem:  conv 3x3/2 (32) -> conv 3x3 (32) -> conv 3x3 (64) -> maxpool 3/2     (N, 64, 73, 73)
             conv 1x1 (80) -> conv 3x3 (192) -> maxpool 3/2                       (N, 192, 35, 35)
      A x3 (Mixed_5b-d) -> B (Mixed_6a)                                            (N, 768, 17, 17)
      C x4 (Mixed_6b-e) -> D (Mixed_7a)                                            (N, 1280, 8, 8)
      E x2 (Mixed_7b-c) -> global average pool                                     (N, 2048)

pytorch-fid takes images in [0, 1] and maps them with 2x - 1; difflab's images are in [-1, 1]
already, and uint8 pixels p become p / 127.5 - 1 in both. Grey images are repeated to three
channels, as pytorch-fid's loader does (PIL ``convert("RGB")``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DIM = 2048
INPUT_SIZE = 299


class BasicConv2d(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3, TensorFlow's) -> ReLU."""

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int | tuple[int, int], **kw: int | tuple[int, int]
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, bias=False, **kw)  # type: ignore[arg-type]
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 average over the pixels inside the image (TensorFlow's SAME padding)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (Szegedy et al. 2016, Fig. 5): 1x1 | 5x5 | two 3x3 | pool; 224 + pool channels out."""

    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    """35 -> 17 grid reduction: 3x3/2 (384) | two 3x3, the second /2 (96) | maxpool/2 (c_in)."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block (Fig. 6): 7x7 convolutions factored into 1x7 and 7x1; 768 channels out."""

    def __init__(self, c_in: int, c7: int) -> None:
        super().__init__()
        row, col = (
            dict(kernel_size=(1, 7), padding=(0, 3)),
            dict(kernel_size=(7, 1), padding=(3, 0)),
        )
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)  # type: ignore[arg-type]
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)  # type: ignore[arg-type]
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)  # type: ignore[arg-type]
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)  # type: ignore[arg-type]
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)  # type: ignore[arg-type]
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)  # type: ignore[arg-type]
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    """17 -> 8 grid reduction: 1x1, 3x3/2 (320) | 1x1, 1x7, 7x1, 3x3/2 (192) | maxpool/2 (c_in)."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block (Fig. 7): 3x3 convolutions split into parallel 1x3 and 3x1; 2048 channels out.

    ``max_pool``: the FID graph's last block pools with a max (its first, with an average).
    """

    def __init__(self, c_in: int, *, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)  # (N, 768, 8, 8)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)  # (N, 768, 8, 8)
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pool)], 1)


class FIDInception(nn.Module):
    """``embed(x)``: the 2048-d pool features FID is computed on; load weights with ``load_state_dict``."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, 1008)  # the graph's classes: unused, kept to load strictly

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 1 or 3, H, W) in [-1, 1], any size -> pool features (N, 2048)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (N, 64, 147, 147)
        x = F.max_pool2d(x, 3, stride=2)  # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (N, 192, 71, 71)
        x = F.max_pool2d(x, 3, stride=2)  # (N, 192, 35, 35)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)  # -> (N, 2048, 8, 8)
        return x.mean(dim=(2, 3))  # (N, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)
