"""The one preprocessing definition: training evaluation, calibration, evaluation and the
camera loop all call :meth:`Preprocessing.prepare` and :meth:`Preprocessing.normalize`.

A mismatch between training and deployment preprocessing (colour order, resize, mean/std)
is the most common cause of "the engine is less accurate" reports, so the definition
travels inside the checkpoint and the ONNX metadata rather than being re-typed per stage.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.config import PreprocessConfig
from pipeline.errors import DataError

if TYPE_CHECKING:
    import torch

# torch and torchvision are imported inside the methods that use them: the definition
# itself (read from a checkpoint or ONNX metadata) must load on a device without torch.


@dataclass(frozen=True)
class Preprocessing:
    """Decode → RGB → resize shorter side → centre crop → scale to [0, 1] → mean/std, NCHW."""

    input_size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    colour: str = "RGB"
    layout: str = "NCHW"
    scale: float = 1.0 / 255.0

    @classmethod
    def from_config(cls, cfg: PreprocessConfig) -> "Preprocessing":
        resize = cfg.resize or round(cfg.input_size / 0.875)
        return cls(cfg.input_size, resize, tuple(cfg.mean), tuple(cfg.std), cfg.interpolation)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 (H, W, 3) array → uint8 (3, S, S) tensor, resized and centre-cropped."""
        return self.resize_crop(self.to_tensor(image), self.resize, self.input_size)

    @staticmethod
    def to_tensor(image: np.ndarray) -> torch.Tensor:
        """RGB uint8 (H, W, 3) array → uint8 (3, H, W) tensor, no copy where possible."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)

    def resize_crop(self, tensor: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
        """Resize the shorter side to ``resize`` and centre-crop ``crop`` (uint8 in, uint8 out)."""
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        mode = InterpolationMode[self.interpolation.upper()]
        tensor = TF.resize(tensor, [resize], interpolation=mode, antialias=True)
        return TF.center_crop(tensor, [crop, crop])

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) → float32 (N, 3, S, S) with this definition's mean and std."""
        import torch

        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return (batch.to(torch.float32) * self.scale - mean) / std


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to an RGB uint8 (H, W, 3) array; grayscale and RGBA are converted."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))  # a writable copy, as torch.from_numpy wants
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable or corrupt image ({exc})") from None
