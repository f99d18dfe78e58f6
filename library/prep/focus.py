"""Where the subject of an image is, for focus crops: faces, else saliency, else the centre.

Faces come from OpenCV's frontal-face Haar cascade that ships inside the ``opencv-python(-headless)``
4.x wheels (``cv2.data.haarcascades``; no download), or from a detector file the user passes: a Haar
``.xml`` or a YuNet ``.onnx`` (``cv2.FaceDetectorYN``). OpenCV 5 wheels ship no cascade files, so
without one there is no face step. Saliency is the spectral residual of Hou & Zhang (2007), computed
here with OpenCV's DFT (OpenCV's own saliency module needs the contrib build).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import cv2
import numpy as np

from library.errors import UserError

DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"
DETECT_SIDE = 1024  # faces are searched on a copy whose longer side is at most this
SALIENCY_SIDE = 64  # the spectral residual works on a small copy (64 px in the paper)


@dataclass
class Focus:
    """The subject of one image in its own pixel coordinates.

    Attributes:
        centre: ``(x, y)`` the crop is centred on.
        source: ``"face"``, ``"saliency"`` or ``"centre"``.
        faces: detected face boxes ``(x, y, w, h)``.
    """

    centre: tuple[float, float]
    source: str
    faces: list[tuple[int, int, int, int]] = field(default_factory=list)


class FaceDetector:
    """A face detector: the bundled Haar cascade, or ``path`` (Haar ``.xml`` or YuNet ``.onnx``).

    ``available`` is False when neither exists (OpenCV 5 wheels without a ``path``).

    Raises:
        UserError: ``path`` is given but cannot be loaded.
    """

    def __init__(self, path: str | None = None):
        self.cascade = self.yunet = None
        if path and path.lower().endswith(".onnx"):
            try:
                self.yunet = cv2.FaceDetectorYN.create(path, "", (320, 320), 0.8)
            except cv2.error as err:
                raise UserError(f"{path}: cannot load this YuNet face model ({err.msg.strip()})") from None
            return
        data = getattr(getattr(cv2, "data", None), "haarcascades", "")
        path = path or os.path.join(data, DEFAULT_CASCADE)
        if hasattr(cv2, "CascadeClassifier") and os.path.isfile(path):
            self.cascade = cv2.CascadeClassifier(path)
            if self.cascade.empty():
                raise UserError(f"{path}: not a Haar cascade file OpenCV can read")

    @property
    def available(self) -> bool:
        """True when a detector is loaded."""
        return self.cascade is not None or self.yunet is not None

    def __call__(self, rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Face boxes ``(x, y, w, h)`` in ``rgb``'s pixels, largest first."""
        h, w = rgb.shape[:2]
        scale = min(1.0, DETECT_SIDE / max(h, w))
        small = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else rgb
        if self.yunet is not None:
            self.yunet.setInputSize((small.shape[1], small.shape[0]))
            _, found = self.yunet.detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
            boxes = [] if found is None else [tuple(row[:4]) for row in found]
        else:
            gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
            side = max(24, min(small.shape[:2]) // 16)
            boxes = [tuple(b) for b in self.cascade.detectMultiScale(gray, 1.1, 5, minSize=(side, side))]
        boxes = [tuple(int(round(v / scale)) for v in b) for b in boxes]
        return sorted(boxes, key=lambda b: -b[2] * b[3])


def spectral_residual(rgb: np.ndarray) -> np.ndarray:
    """Saliency map (Hou & Zhang 2007) of ``rgb`` at ``SALIENCY_SIDE`` px width, float32 in [0, 1]."""
    h, w = rgb.shape[:2]
    size = (SALIENCY_SIDE, max(1, round(h * SALIENCY_SIDE / w)))
    gray = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA).astype(np.float32)
    spectrum = np.fft.fft2(gray)
    log_amplitude = np.log(np.abs(spectrum) + 1e-8)
    residual = log_amplitude - cv2.blur(log_amplitude, (3, 3), borderType=cv2.BORDER_REPLICATE)
    saliency = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    saliency = cv2.GaussianBlur(saliency.astype(np.float32), (0, 0), 2.5)
    peak = float(saliency.max())
    return saliency / peak if peak > 0 else saliency


def saliency_centre(rgb: np.ndarray) -> tuple[float, float] | None:
    """Weighted centroid of the salient region (map values above three times the mean, the paper's
    object threshold) in ``rgb``'s pixels; None for a flat map."""
    sal = spectral_residual(rgb)
    mean = float(sal.mean())
    if mean <= 0 or float(sal.max()) - mean < 1e-6:
        return None
    weights = np.where(sal > 3 * mean, sal, 0.0)
    if weights.sum() <= 0:
        weights = sal
    ys, xs = np.mgrid[0:sal.shape[0], 0:sal.shape[1]]
    total = weights.sum()
    scale_x, scale_y = rgb.shape[1] / sal.shape[1], rgb.shape[0] / sal.shape[0]
    return (float((weights * (xs + 0.5)).sum() / total * scale_x), float((weights * (ys + 0.5)).sum() / total * scale_y))


def find_focus(rgb: np.ndarray, detector: FaceDetector | None) -> Focus:
    """The subject of ``rgb``: the centre of the box around all faces (the largest face alone when the
    box is over half the image wide or high), else the saliency centroid, else the image centre."""
    h, w = rgb.shape[:2]
    faces = detector(rgb[..., :3]) if detector is not None and detector.available else []
    if faces:
        x0 = min(b[0] for b in faces)
        y0 = min(b[1] for b in faces)
        x1 = max(b[0] + b[2] for b in faces)
        y1 = max(b[1] + b[3] for b in faces)
        if x1 - x0 > w / 2 or y1 - y0 > h / 2:
            x0, y0, x1, y1 = faces[0][0], faces[0][1], faces[0][0] + faces[0][2], faces[0][1] + faces[0][3]
        return Focus(((x0 + x1) / 2, (y0 + y1) / 2), "face", faces)
    centre = saliency_centre(np.ascontiguousarray(rgb[..., :3]))
    if centre is not None:
        return Focus(centre, "saliency")
    return Focus((w / 2, h / 2), "centre")
