"""Small test networks shared by the engine tests."""

import torch
import torch.nn.functional as F
from torch import nn

SPELLINGS = {
    "nn.ReLU": lambda m, t: m.relu(t),
    "nn.ReLU(inplace)": lambda m, t: m.relu_inplace(t),
    "F.relu": lambda m, t: F.relu(t),
    "F.relu(inplace)": lambda m, t: F.relu(t, inplace=True),
    "F.relu_": lambda m, t: F.relu_(t),
    "torch.relu": lambda m, t: torch.relu(t),
    "torch.relu_": lambda m, t: torch.relu_(t),
    "x.relu()": lambda m, t: t.relu(),
    "x.relu_()": lambda m, t: t.relu_(),
}


class SmallNet(nn.Module):
    """conv → ReLU → max-pool (overlapping) → conv → ReLU → max-pool → linear; the ReLU spelling varies."""

    def __init__(self, spelling: str = "nn.ReLU", pool: str = "module"):
        super().__init__()
        self.spelling, self.pool_spelling = spelling, pool
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.relu_inplace = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def act(self, t):
        return SPELLINGS[self.spelling](self, t)

    def down(self, t):
        return self.pool(t) if self.pool_spelling == "module" else F.max_pool2d(t, 3, 2, 1)

    def forward(self, x):
        x = self.down(self.act(self.conv1(x)))
        x = self.down(self.act(self.conv2(x)))
        return self.fc(x.flatten(1))
