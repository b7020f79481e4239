"""A tiny classifier whose forward pass sleeps ``SLOWNET_SECONDS`` (default 3) on any non-blank input.

Served as ``slownet:build`` (with this folder on ``PYTHONPATH``) to hold a request in flight for a
known time, e.g. across a shutdown; the blank start-up checks pass at once.
"""

import os
import time

import torch
from torch import nn


class SlowNet(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.detach().abs().sum() > 0):
            time.sleep(float(os.environ.get("SLOWNET_SECONDS", "3")))
        return self.head(self.relu(self.conv(x)).mean(dim=(2, 3)))


def build(num_classes: int = 3) -> nn.Module:
    return SlowNet(num_classes)
