"""Contact sheets: labelled tiles side by side, for previews and the README picture."""
from __future__ import annotations

import cv2
import numpy as np


def contact_sheet(tiles: list[np.ndarray], labels: list[str], tile_height: int = 320) -> np.ndarray:
    """Resize each (H, W, 3) uint8 tile to ``tile_height``, label it, and join them left to right."""
    out = []
    for tile, label in zip(tiles, labels):
        h, w = tile.shape[:2]
        width = max(1, round(w * tile_height / h))
        img = cv2.resize(np.ascontiguousarray(tile), (width, tile_height), interpolation=cv2.INTER_AREA)
        band = np.full((28, width, 3), 32, np.uint8)
        cv2.putText(band, label, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
        out.append(np.concatenate([band, img]))
        out.append(np.full((tile_height + 28, 4, 3), 255, np.uint8))
    return np.concatenate(out[:-1], axis=1)
