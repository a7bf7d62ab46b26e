"""The evaluator: a small CNN classifier whose penultimate layer is the feature space for FID/KID.

    x --conv3x3(w/2)--ReLU--maxpool--conv3x3(w)--ReLU--maxpool--conv3x3(2w)--ReLU--flatten
      --linear--> features (feature_dim, before the ReLU) --ReLU--dropout--linear--> logits

It plays the part Inception-v3 plays for published FIDs (Heusel et al. 2017), trained by the
project on the dataset being evaluated, so scoring works offline and on 1-channel 28 px images.
Features are taken before the ReLU: they are denser and closer to Gaussian than the rectified
ones, which is what the Fréchet distance assumes. See docs/metrics.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ClassifierConfig:
    """The evaluator network's shape; stored as JSON in the evaluator file's header."""

    image_size: int = 28  # height = width of the input images, in pixels (>= 4)
    in_channels: int = 1  # 1 for grey images, 3 for RGB
    num_classes: int = 10  # output classes (1 for a set without classes)
    width: int = 32  # channels of the middle convolution; the others are width/2 and 2 width
    feature_dim: int = 128  # size of the penultimate layer: the feature space for FID/KID/PR
    dropout: float = 0.3  # dropout between the features and the logits (training only)

    def validate(self) -> None:
        if self.image_size < 4:
            raise ValueError(
                f"evaluator image size must be at least 4 pixels (two 2x poolings), "
                f"got {self.image_size}"
            )
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if self.num_classes < 1 or self.width < 2 or self.width % 2 or self.feature_dim < 2:
            raise ValueError(
                f"bad evaluator shape: {self.num_classes} classes, width {self.width}, "
                f"feature_dim {self.feature_dim} (expected >= 1, an even number >= 2, >= 2)"
            )


class Classifier(nn.Module):
    """Small CNN; ``features(x)`` is the feature map used by the metrics, ``forward`` the logits."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        w = config.width
        self.conv1 = nn.Conv2d(config.in_channels, w // 2, 3, padding=1)
        self.conv2 = nn.Conv2d(w // 2, w, 3, padding=1)
        self.conv3 = nn.Conv2d(w, 2 * w, 3, padding=1)
        side = config.image_size // 4
        self.fc1 = nn.Linear(2 * w * side * side, config.feature_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.fc2 = nn.Linear(config.feature_dim, config.num_classes)
        # Set after training from the training set's features (see ``embed``).
        self.register_buffer("feature_mean", torch.zeros(config.feature_dim))
        self.register_buffer("feature_scale", torch.ones(()))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, S, S) in [-1, 1] -> features (B, feature_dim)."""
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, w/2, S/2, S/2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # (B, w, S/4, S/4)
        h = F.relu(self.conv3(h))  # (B, 2w, S/4, S/4)
        return self.fc1(h.flatten(1))  # (B, feature_dim), before the ReLU

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The metric features: ``features`` centred and scaled by one number on the training set.

        After it the training images' features have mean 0 and mean per-dimension variance 1,
        so KID's kernel (x.y / d + 1)^3 sees x.y / d of order 1, as it does for Inception
        features; one scale for all dimensions keeps the distances the network learned.
        """
        return (self.features(x) - self.feature_mean) / self.feature_scale  # (B, feature_dim)

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(F.relu(features)))  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.features(x))
