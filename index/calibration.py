"""Cosine -> readable percent, and the default threshold, per encoder.

A `Calibration` is a monotone piecewise-linear map through knots (cosine, percent), clamped to
0..100, plus the default threshold (a cosine) and the ambiguity margin. It is stored in the index
metadata, so every score an index gives is read the same way.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

CALIBRATION_DIR = Path(__file__).with_name("calibrations")


@dataclass(frozen=True)
class Calibration:
    """How to read one encoder's cosines: `percent(cos)` is monotone, 0..100."""

    knots_cosine: tuple[float, ...] = (0.0, 1.0)
    knots_percent: tuple[float, ...] = (0.0, 100.0)
    threshold: float = 0.9
    margin: float = 0.0
    source: str = "uncalibrated: percent = 100 x cosine"
    extra: dict[str, object] = field(default_factory=dict)

    def percent(self, cosine: float | np.ndarray) -> float | np.ndarray:
        value = np.interp(cosine, self.knots_cosine, self.knots_percent)
        value = np.clip(value, 0.0, 100.0)
        if np.ndim(value) == 0:
            return round(float(value), 1)
        return np.round(value, 1)

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["knots_cosine"] = list(self.knots_cosine)
        data["knots_percent"] = list(self.knots_percent)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Calibration:
        return cls(
            knots_cosine=tuple(float(x) for x in data["knots_cosine"]),  # type: ignore[union-attr]
            knots_percent=tuple(float(x) for x in data["knots_percent"]),  # type: ignore[union-attr]
            threshold=float(data["threshold"]),  # type: ignore[arg-type]
            margin=float(data.get("margin", 0.0)),  # type: ignore[arg-type]
            source=str(data.get("source", "")),
            extra=dict(data.get("extra", {}) or {}),  # type: ignore[call-overload]
        )


def calibration_file(fingerprint: str) -> Path:
    """Where the shipped calibration for an encoder fingerprint lives (by backend name and kb prefix)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in fingerprint)
    return CALIBRATION_DIR / f"{safe}.json"


def shipped_calibration(fingerprint: str) -> Calibration | None:
    """The calibration shipped with the package for this exact encoder, if there is one."""
    path = calibration_file(fingerprint)
    if not path.is_file():
        return None
    return Calibration.from_dict(json.loads(path.read_text(encoding="utf-8")))


def default_calibration(fingerprint: str) -> Calibration:
    """The shipped calibration, or the documented uncalibrated default until `faqbot calibrate` runs."""
    return shipped_calibration(fingerprint) or Calibration()
