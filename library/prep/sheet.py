"""Contact sheet of crop boxes (``prepare_images --debug``): each source image with its crop drawn on it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from library.io.safetensors_io import atomic_path
from library.prep.crop import CropPlan

THUMB = 192  # longer side of each thumbnail
COLUMNS = 4
CROP_COLOR, FACE_COLOR, POINT_COLOR = (0, 220, 0), (230, 30, 30), (250, 200, 0)


def thumbnail(arr: np.ndarray, plan: CropPlan) -> np.ndarray:
    """``THUMB``-sized RGB copy of a source image with the crop (green), faces (red) and focus point (yellow)."""
    h, w = arr.shape[:2]
    scale = THUMB / max(h, w)
    thumb = cv2.resize(np.ascontiguousarray(arr[..., :3]), (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA)
    focus = plan.focus
    for x, y, fw, fh in focus.faces if focus else []:
        cv2.rectangle(thumb, (round(x * scale), round(y * scale)), (round((x + fw) * scale), round((y + fh) * scale)),
                      FACE_COLOR, 1)
    left, top, right, bottom = plan.source_box
    cv2.rectangle(thumb, (round(left * scale), round(top * scale)),
                  (round(right * scale) - 1, round(bottom * scale) - 1), CROP_COLOR, 2)
    if focus:
        cv2.circle(thumb, (round(focus.centre[0] * scale), round(focus.centre[1] * scale)), 3, POINT_COLOR, -1)
        cv2.putText(thumb, focus.source, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, POINT_COLOR, 1)
    return thumb


def write_sheet(thumbs: list[np.ndarray], path: Path) -> None:
    """Lay ``thumbs`` out on a grey grid, ``COLUMNS`` per row, and write a PNG atomically."""
    rows = (len(thumbs) + COLUMNS - 1) // COLUMNS
    sheet = np.full((max(rows, 1) * (THUMB + 4), COLUMNS * (THUMB + 4), 3), 48, np.uint8)
    for i, thumb in enumerate(thumbs):
        y, x = (i // COLUMNS) * (THUMB + 4) + 2, (i % COLUMNS) * (THUMB + 4) + 2
        sheet[y:y + thumb.shape[0], x:x + thumb.shape[1]] = thumb
    with atomic_path(path) as tmp:
        Image.fromarray(sheet).save(tmp)
