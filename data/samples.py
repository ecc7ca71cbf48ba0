"""Two deterministic, built-in BGR scenes for export examples and smoke tests when no data set is given."""

from __future__ import annotations

import numpy as np

__all__ = ["sample_images"]


def sample_images() -> list:
    import cv2

    road = np.zeros((240, 320, 3), np.uint8)
    road[:120] = (235, 206, 135)  # sky
    road[120:] = (90, 90, 90)  # asphalt
    cv2.rectangle(road, (120, 90), (220, 170), (40, 40, 200), -1)  # a red car body
    cv2.circle(road, (145, 172), 14, (20, 20, 20), -1)
    cv2.circle(road, (195, 172), 14, (20, 20, 20), -1)
    table = np.full((200, 200, 3), (60, 110, 160), np.uint8)
    cv2.circle(table, (100, 100), 60, (240, 240, 240), -1)
    cv2.circle(table, (100, 100), 40, (30, 60, 90), -1)
    return [road, table]
