"""Architectures of the shared assets that no zoo builds: load them with ``--model benchmarks/nets.py:NAME``.

``cifar_nobn``: the VGG-style CIFAR-10 net without BatchNorm of ``assets/cifar10-nobn/`` (its README gives
the architecture; weights: ``--weights assets/cifar10-nobn/cifar_net-d75fd60a.pth``, a plain state dict).
Inputs: pixels / 255, normalised with mean 0.5 and std 0.5 per channel.
"""

from __future__ import annotations

from torch import nn

NOBN_MEAN = (0.5, 0.5, 0.5)
NOBN_STD = (0.5, 0.5, 0.5)


class CifarNoBN(nn.Module):
    """Three 3x3 convs (ReLU, 2x2 max-pool after each), three linear layers; every layer has a bias."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(64 * 4 * 4, 512)
        self.dropout = nn.Dropout(0.25)
        self.fc2 = nn.Linear(512, 128)
        self.fc3 = nn.Linear(128, classes)

    def forward(self, x):  # noqa: ANN001, ANN201 - a plain nn.Module
        for conv in (self.conv1, self.conv2, self.conv3):
            x = self.pool(self.relu(conv(x)))
        x = self.dropout(self.relu(self.fc1(x.flatten(1))))
        return self.fc3(self.relu(self.fc2(x)))


def cifar_nobn() -> nn.Module:
    return CifarNoBN()
