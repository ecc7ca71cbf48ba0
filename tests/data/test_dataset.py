import json

import pytest

from fusionrt.data.dataset import LabeledDataset
from fusionrt.data.emoji import convert_emoji_dataset
from fusionrt.runtime.errors import DataError


def test_csv_and_jsonl_read_the_same(shape_data, tmp_path):
    csv_set = LabeledDataset.read(shape_data[0])
    jsonl = shape_data[0].parent / "train.jsonl"
    jsonl.write_text("\n".join(json.dumps({"image": str(s.image), "text": s.text, "label": s.label}) for s in csv_set))
    assert LabeledDataset.read(jsonl).samples == csv_set.samples
    assert list(csv_set) == list(csv_set)  # re-iterable, same order
    assert csv_set.labels == ("blue", "green", "red")


@pytest.mark.parametrize("content, message", [
    ("img,txt\n", "expected a header with columns"),
    ("image,text,label\nmissing.png,hello,a\n", "1 image files not found"),
    ("image,text,label\nx.png,,a\n", "expected non-empty"),
    ("image,text,label\n", "no samples found"),
])
def test_bad_csv(tmp_path, content, message):
    (tmp_path / "x.png").write_bytes(b"")
    path = tmp_path / "data.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        LabeledDataset.read(path)


def test_wrong_suffix(tmp_path):
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="expected a .csv or .jsonl"):
        LabeledDataset.read(tmp_path / "d.txt")


def test_emoji_conversion_is_stratified_and_seeded(tmp_path):
    import cv2
    import numpy as np

    pkg = tmp_path / "package"
    (pkg / "img/google/64").mkdir(parents=True)
    entries = []
    for i in range(20):
        category = ["Flags", "Food & Drink", "Component"][i % 3]
        name = f"{i:04x}.png"
        cv2.imwrite(str(pkg / "img/google/64" / name), np.full((64, 64, 3), i * 10, np.uint8))
        entries.append({"name": f"THING {i}", "short_names": [f"thing_{i}"], "image": name,
                        "category": category, "has_img_google": True})
    (pkg / "emoji.json").write_text(json.dumps(entries))
    a = convert_emoji_dataset(pkg, tmp_path / "a")
    b = convert_emoji_dataset(pkg, tmp_path / "b")
    assert a["classes"] == ["Flags", "Food & Drink"]  # Component dropped
    train, test = LabeledDataset.read(a["train"]), LabeledDataset.read(a["test"])
    assert len(train) + len(test) == 14 and {s.label for s in test} == {"Flags", "Food & Drink"}
    assert open(a["test"]).read() == open(b["test"]).read()
    assert test[0].text.startswith("thing ") and "(thing " in test[0].text
    with pytest.raises(DataError, match="not an unpacked emoji-datasource-google"):
        convert_emoji_dataset(tmp_path, tmp_path / "c")
