"""Turn the npm `emoji-datasource-google` package into the image,text,label CSV format (train/test split)."""

from __future__ import annotations

import csv
import json
import os
import random
from collections import defaultdict
from pathlib import Path

from fusionrt.runtime.errors import DataError

__all__ = ["convert_emoji_dataset"]

SKIPPED_CATEGORIES = ("Component",)  # 5 skin-tone swatches: too few to learn or test


def convert_emoji_dataset(package_dir, out_dir, test_fraction: float = 0.2, seed: int = 0, size: int = 64) -> dict:
    """Write `train.csv` and `test.csv` into `out_dir`; the split is stratified by category and seeded.

    Text = the emoji's name and short names ('grinning face (grinning)'); label = its category.
    Returns {'train': path, 'test': path, 'classes': [...], 'counts': {...}}.
    """
    package_dir, out_dir = Path(package_dir), Path(out_dir)
    meta = package_dir / "emoji.json"
    images = package_dir / "img" / "google" / str(size)
    if not meta.is_file() or not images.is_dir():
        raise DataError(
            f"'{package_dir}' is not an unpacked emoji-datasource-google package (expected emoji.json and img/google/{size}/). "
            "Get it with `npm pack emoji-datasource-google@16.0.0 && tar xzf emoji-datasource-google-16.0.0.tgz`."
        )
    by_category = defaultdict(list)
    for entry in json.loads(meta.read_text(encoding="utf-8")):
        image = images / entry["image"]
        if entry.get("category") in SKIPPED_CATEGORIES or not entry.get("has_img_google") or not image.is_file():
            continue
        names = [n.replace("_", " ") for n in entry.get("short_names", [])]
        title = (entry.get("name") or names[0]).lower()
        text = f"{title} ({', '.join(names)})" if names else title
        by_category[entry["category"]].append((image, text, entry["category"]))
    rng = random.Random(seed)
    train, test = [], []
    for category in sorted(by_category):
        rows = sorted(by_category[category], key=lambda r: r[0].name)
        rng.shuffle(rows)
        cut = max(1, round(len(rows) * test_fraction))
        test += rows[:cut]
        train += rows[cut:]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in (("train", train), ("test", test)):
        paths[split] = out_dir / f"{split}.csv"
        with open(paths[split], "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image", "text", "label"])
            for image, text, label in rows:
                writer.writerow([os.path.relpath(image, out_dir), text, label])
    counts = {c: len(v) for c, v in sorted(by_category.items())}
    return {"train": str(paths["train"]), "test": str(paths["test"]), "classes": sorted(counts), "counts": counts}
