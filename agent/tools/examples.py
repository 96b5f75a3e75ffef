"""Small PyTorch models for the tools' examples and tests (needs the ``torch`` extra).

``orientation_student`` is a student for the demo's document orientation
classifier (224x224 RGB in, four logits out: 0, 90, 180, 270 degrees), 47k
parameters against the teacher's 1.7M; ``edge-agent model distill`` trains
it on the teacher's outputs.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["OrientationStudent", "orientation_student", "tiny_classifier"]

ORIENTATION_CLASSES = 4
STUDENT_WIDTHS = (16, 32, 48, 64)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class OrientationStudent(nn.Module):
    """Four strided conv blocks, global average pooling and a linear layer; outputs logits."""

    def __init__(self, classes: int = ORIENTATION_CLASSES, widths: tuple[int, ...] = STUDENT_WIDTHS) -> None:
        super().__init__()
        layers, cin = [], 3
        for width in widths:
            layers.append(_block(cin, width))
            cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, classes)

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.classifier(self.pool(self.features(x)).flatten(1))
        return logits


def orientation_student() -> nn.Module:
    return OrientationStudent()


def tiny_classifier() -> nn.Module:
    """Three classes from a 3x32x32 image: conv, ReLU, pooling, linear (for export checks)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 3))
