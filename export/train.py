"""Train the fusion head (optionally the encoders too) on a labelled data set; seeded and reproducible."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fusionrt.data.dataset import LabeledDataset
from fusionrt.export.model import FusionClassifier
from fusionrt.data.metrics import classification_metrics
from fusionrt.runtime.preprocess import preprocess_batch
from fusionrt.runtime.progress import progress
from fusionrt.runtime.tokenize import TextTokenizer

__all__ = ["TrainSettings", "train_head", "encode_dataset", "evaluate_torch", "seed_everything"]


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    unfreeze: bool = False  # also train the encoders (slow on a CPU; features are then not cached)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _tokenizer_of(model: FusionClassifier) -> TextTokenizer:
    """The runtime's own tokenizer, built from the model's tokenizer.json: one tokenization path everywhere."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        model.tokenizer.backend_tokenizer.save(str(path))
        return TextTokenizer(path, model.config.max_seq_len)


def _inputs(model, tokenizer, images, texts):
    pixels = torch.from_numpy(preprocess_batch(images, model.config.preprocess))
    tokens = tokenizer(texts)
    return pixels, torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"])


@torch.no_grad()
def encode_dataset(model: FusionClassifier, data: LabeledDataset, batch_size: int = 64, desc: str = "encoding") -> tuple:
    """Frozen-encoder features for every sample: (image_features, text_features) as float32 tensors."""
    model.eval()
    tokenizer = _tokenizer_of(model)
    images, texts = [], []
    for batch_images, batch_texts, _ in progress(data.batches(batch_size), desc, total=-(-len(data) // batch_size)):
        pixels, ids, mask = _inputs(model, tokenizer, batch_images, batch_texts)
        images.append(model.image_encoder(pixels))
        texts.append(model.text_encoder(ids, mask))
    return torch.cat(images), torch.cat(texts)


def train_head(model: FusionClassifier, train: LabeledDataset, settings: TrainSettings = TrainSettings()) -> dict:
    """Train in place; returns {'epochs', 'final_loss'}. With frozen encoders, features are computed once."""
    seed_everything(settings.seed)
    labels = torch.tensor(train.label_indices(model.config.labels))
    model.freeze_encoders(not settings.unfreeze)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    generator = torch.Generator().manual_seed(settings.seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    if settings.unfreeze:
        tokenizer = _tokenizer_of(model)
    else:
        image_features, text_features = encode_dataset(model, train, desc="features (frozen encoders)")
    loss = torch.tensor(float("nan"))
    for _ in progress(range(settings.epochs), "training head", total=settings.epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(train), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            if settings.unfreeze:
                chunk = [train[i] for i in idx.tolist()]
                pixels, ids, mask = _inputs(model, tokenizer, [s.image for s in chunk], [s.text for s in chunk])
                logits = model(pixels, ids, mask)
            else:
                logits = model.head(image_features[idx], text_features[idx])
            loss = loss_fn(logits, labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.freeze_encoders(False)
    model.eval()
    return {"epochs": settings.epochs, "final_loss": float(loss.detach())}


@torch.no_grad()
def evaluate_torch(model: FusionClassifier, data: LabeledDataset, batch_size: int = 64) -> dict:
    """PyTorch FP32 metrics on `data`, plus the predicted indices (for agreement checks)."""
    image_features, text_features = encode_dataset(model, data, batch_size, desc="PyTorch eval")
    predicted = model.head(image_features, text_features).argmax(-1).tolist()
    metrics = classification_metrics(data.label_indices(model.config.labels), predicted, len(model.config.labels))
    return {**metrics, "predictions": predicted}
