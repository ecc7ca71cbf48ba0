"""FusionConfig + FusionClassifier: image encoder and text encoder, concatenated features, MLP head.

Checkpoint layout (`save_pretrained` / `from_pretrained`): fusion_config.json, model.safetensors
(every weight; no pickle), text_encoder/ (Hugging Face config + tokenizer files).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fusionrt.export.encoders import TextEncoder, build_image_encoder
from fusionrt.export.user_module import is_reference, load_user_encoder
from fusionrt.runtime.errors import CheckpointError
from fusionrt.runtime.manifest import PreprocessSpec

__all__ = ["FusionConfig", "FusionClassifier", "FusionHead", "IMAGENET_MEAN", "IMAGENET_STD"]

CONFIG_NAME = "fusion_config.json"
WEIGHTS_NAME = "model.safetensors"
TEXT_DIR = "text_encoder"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FusionConfig:
    labels: tuple
    image_backbone: str = "resnet50"  # resnet18..resnet152 | timm:NAME | module:PATH.py:NAME | custom (Python only)
    image_module_sha256: str = ""  # module:...: the sha256 of its file when the checkpoint was made
    image_size: tuple = (224, 224)
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    interpolation: str = "linear"
    channel_order: str = "rgb"  # what the image encoder takes: "rgb" (torchvision, timm) or "bgr"
    text_pooling: str = "mean"
    max_seq_len: int = 128
    head_hidden: tuple = (512,)
    dropout: float = 0.1
    image_dim: int = 0  # filled in when the model is built
    text_dim: int = 0

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec(self.image_size[0], self.image_size[1], tuple(self.mean), tuple(self.std), self.interpolation,
                              self.channel_order)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, where: str = "fusion_config.json") -> "FusionConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{where} is not valid JSON ({exc}).") from exc
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown or "labels" not in data:
            raise CheckpointError(f"{where}: expected keys from {sorted(known)} including 'labels', found {sorted(data)}.")
        tuples = {k: tuple(v) for k, v in data.items() if isinstance(v, list)}
        return cls(**{**data, **tuples})


def _mlp(in_dim: int, hidden: tuple, classes: int, dropout: float) -> nn.Sequential:
    layers, width = [], in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


class FusionHead(nn.Module):
    """(image_features, text_features) -> logits: concat -> Linear -> ReLU -> ... -> Linear."""

    def __init__(self, image_dim: int, text_dim: int, hidden: tuple, classes: int, dropout: float = 0.1):
        super().__init__()
        self.mlp = _mlp(image_dim + text_dim, tuple(hidden), classes, dropout)

    def forward(self, image_features, text_features):
        return self.mlp(torch.cat([image_features, text_features], dim=-1))


class FusionClassifier(nn.Module):
    def __init__(self, config: FusionConfig, text_model, image_encoder: nn.Module | None = None, tokenizer=None,
                 allow_changed_module: bool = False):
        """`text_model`: a Hugging Face BERT-family model; `image_encoder`: your nn.Module, required when the backbone
        is 'custom' (with 'module:PATH.py:NAME' it is built from that reference)."""
        super().__init__()
        if image_encoder is None and is_reference(config.image_backbone):
            image_encoder, sha = load_user_encoder(config.image_backbone, config.image_module_sha256,
                                                   allow_changed_module)
            config = dataclasses.replace(config, image_module_sha256=config.image_module_sha256 or sha)
        if image_encoder is None:
            image_encoder, image_dim = build_image_encoder(config.image_backbone)
        else:
            image_dim = _probe_dim(image_encoder, config.image_size)
        self.image_encoder = image_encoder
        self.text_encoder = TextEncoder(text_model, config.text_pooling)
        self.config = dataclasses.replace(config, image_dim=image_dim, text_dim=self.text_encoder.dim)
        self.head = FusionHead(image_dim, self.text_encoder.dim, config.head_hidden, len(config.labels), config.dropout)
        self.tokenizer = tokenizer  # a transformers tokenizer, saved beside the text model

    def forward(self, pixel_values, input_ids, attention_mask):
        return self.head(self.image_encoder(pixel_values), self.text_encoder(input_ids, attention_mask))

    def freeze_encoders(self, frozen: bool = True) -> None:
        for module in (self.image_encoder, self.text_encoder):
            module.requires_grad_(not frozen)

    # -- checkpoint I/O ---------------------------------------------------------------------------
    def save_pretrained(self, folder) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        (folder / TEXT_DIR).mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(self.config.to_json() + "\n")
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(_unshare(state), str(folder / WEIGHTS_NAME))
        self.text_encoder.model.config.save_pretrained(str(folder / TEXT_DIR))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(folder / TEXT_DIR))
        return folder

    @classmethod
    def from_pretrained(cls, folder, image_encoder: nn.Module | None = None,
                        allow_changed_module: bool = False) -> "FusionClassifier":
        """A saved checkpoint. A 'module:' image encoder is rebuilt from its reference (its file must be the one it was
        trained with unless `allow_changed_module`); a 'custom' one must be passed as `image_encoder`."""
        import transformers
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in (CONFIG_NAME, WEIGHTS_NAME, f"{TEXT_DIR}/config.json"):
            if not (folder / name).is_file():
                raise CheckpointError(
                    f"checkpoint '{folder}' lacks {name}: expected a folder written by `fusionrt train` "
                    "or FusionClassifier.save_pretrained."
                )
        config = FusionConfig.from_json((folder / CONFIG_NAME).read_text(), str(folder / CONFIG_NAME))
        text_config = transformers.AutoConfig.from_pretrained(str(folder / TEXT_DIR), local_files_only=True)
        text_model = transformers.AutoModel.from_config(text_config)
        tokenizer = None
        if (folder / TEXT_DIR / "tokenizer.json").is_file():
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder / TEXT_DIR), local_files_only=True)
        if image_encoder is None and config.image_backbone == "custom":
            raise CheckpointError(f"checkpoint '{folder}' has a 'custom' image encoder (your own nn.Module, given in "
                                  "Python): load it with FusionClassifier.from_pretrained(folder, image_encoder=...), or "
                                  "train with --image-backbone module:PATH.py:NAME so the command line can rebuild it.")
        model = cls(config, text_model, image_encoder, tokenizer, allow_changed_module)
        state = load_file(str(folder / WEIGHTS_NAME))
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
            raise CheckpointError(
                f"checkpoint '{folder}': weights do not match the config ({first}). Was it saved from another architecture?"
            ) from exc
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(
                f"checkpoint '{folder}': weights do not match the config (missing {result.missing_keys[:3]}, "
                f"unexpected {result.unexpected_keys[:3]}). Was it saved from another architecture?"
            )
        return model.eval()


def _probe_dim(module: nn.Module, size: tuple) -> int:
    with torch.no_grad():
        was_training = module.training
        try:
            out = module.eval()(torch.zeros(1, 3, *size))
        except Exception as exc:  # the user's module on the configured size: say so before any work
            raise CheckpointError(f"the image encoder failed on a (1, 3, {size[0]}, {size[1]}) input "
                                  f"({type(exc).__name__}: {exc}): expected --image-size to fit it.") from exc
        module.train(was_training)
    if out.ndim != 2:
        raise CheckpointError(f"image encoder must map (N,3,H,W) to (N,D); it returned shape {tuple(out.shape)}.")
    return int(out.shape[1])


def _unshare(state: dict) -> dict:
    """safetensors refuses tensors that share memory (tied weights); store independent copies."""
    seen, out = set(), {}
    for key, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    return out
