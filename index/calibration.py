"""Cosine -> readable percent, the answer decision's model, and the fallback threshold, per encoder.

A `Calibration` is a monotone piecewise-linear map through knots (cosine, percent), clamped to
0..100 (what /similarity reports), the confidence model the bot decides with (index.confidence;
None for an encoder nobody fitted one for), plus the cosine threshold and ambiguity margin used
when there is no confidence model or a KB sets a threshold. It is stored in the index
metadata, so every score an index gives is read the same way. `faqbot calibrate` fits one
(admin.quality.calibrate); the one for the bundled encoder ships in `index/calibrations/` so a fresh
install reads scores correctly before anyone calibrates (how it was made: docs/quality.md).

`extra["scope"]` says where a calibration came from: "shipped" (the package file), "local" (fitted
by `faqbot calibrate` for this deployment, kept across KB rebuilds) or absent (the uncalibrated
fallback).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np

from faq.errors import FaqbotError
from index.confidence import ConfidenceModel

CALIBRATION_DIR = Path(__file__).with_name("calibrations")
SCOPE_SHIPPED = "shipped"
SCOPE_LOCAL = "local"


class CalibrationError(FaqbotError, ValueError):
    """Knots or numbers that cannot describe a monotone, bounded percent map."""

    code = "invalid_calibration"


@dataclass(frozen=True)
class Calibration:
    """How to read one encoder's cosines: `percent(cos)` is monotone, 0..100."""

    knots_cosine: tuple[float, ...] = (0.0, 1.0)
    knots_percent: tuple[float, ...] = (0.0, 100.0)
    threshold: float = 0.9
    margin: float = 0.0
    source: str = "uncalibrated: percent = 100 x cosine"
    extra: dict[str, object] = field(default_factory=dict)
    confidence: ConfidenceModel | None = None

    def __post_init__(self) -> None:
        # Refuse a map that could read a higher cosine as a lower percent, or leave 0..100:
        # a broken calibration file must fail loudly at load, not show odd numbers to customers.
        cos, pct = self.knots_cosine, self.knots_percent
        if len(cos) != len(pct) or len(cos) < 2:
            raise CalibrationError(f"need at least two (cosine, percent) knots of equal count, got {len(cos)} and {len(pct)}")
        if not all(math.isfinite(v) for v in (*cos, *pct, self.threshold, self.margin)):
            raise CalibrationError("knots, threshold and margin must be finite numbers")
        if any(b <= a for a, b in pairwise(cos)):
            raise CalibrationError("knot cosines must be strictly increasing")
        if any(b < a for a, b in pairwise(pct)):
            raise CalibrationError("knot percents must not decrease")
        if pct[0] < 0.0 or pct[-1] > 100.0:
            raise CalibrationError("knot percents must lie within 0..100")
        if not -1.0 <= self.threshold <= 1.0 or self.margin < 0.0:
            raise CalibrationError(f"threshold must be a cosine in -1..1 and margin >= 0, got {self.threshold}, {self.margin}")

    def percent(self, cosine: float | np.ndarray) -> float | np.ndarray:
        value = np.interp(cosine, self.knots_cosine, self.knots_percent)
        value = np.clip(value, 0.0, 100.0)
        if np.ndim(value) == 0:
            return round(float(value), 1)
        return np.round(value, 1)

    def cosine_for_percent(self, percent: float) -> float:
        """The smallest cosine that reads as `percent` (to explain a threshold in percent terms)."""
        cos, pct = np.asarray(self.knots_cosine), np.asarray(self.knots_percent)
        if percent <= pct[0]:
            return float(cos[0])
        if percent > pct[-1]:
            return float(cos[-1])
        i = int(np.searchsorted(pct, percent, side="left"))
        if pct[i] == pct[i - 1]:
            return float(cos[i])
        return float(cos[i - 1] + (percent - pct[i - 1]) * (cos[i] - cos[i - 1]) / (pct[i] - pct[i - 1]))

    @property
    def scope(self) -> str | None:
        value = self.extra.get("scope")
        return str(value) if value else None

    @property
    def is_local(self) -> bool:
        """Fitted by `faqbot calibrate` for this deployment: worth keeping when the KB is rebuilt."""
        return self.scope == SCOPE_LOCAL

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["knots_cosine"] = list(self.knots_cosine)
        data["knots_percent"] = list(self.knots_percent)
        data["confidence"] = self.confidence.to_dict() if self.confidence else None
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
            confidence=ConfidenceModel.from_dict(data["confidence"]) if data.get("confidence") else None,  # type: ignore[arg-type]
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


def write_shipped_calibration(calibration: Calibration, fingerprint: str) -> Path:
    """Write the package file for `fingerprint` (what `faqbot calibrate --write-shipped` does)."""
    path = calibration_file(fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**calibration.to_dict(), "fingerprint": fingerprint}
    payload["extra"] = {**calibration.extra, "scope": SCOPE_SHIPPED}
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def default_calibration(fingerprint: str) -> Calibration:
    """The shipped calibration, or the documented uncalibrated default until `faqbot calibrate` runs."""
    return shipped_calibration(fingerprint) or Calibration()
