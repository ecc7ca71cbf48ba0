"""fusionrt.export: your model as a bundle (needs `pip install 'fusionrt[export]'`: torch, transformers, onnx).

    FusionConfig, FusionClassifier  the two-branch model and its checkpoint (save_pretrained / from_pretrained)
    build_model                     a FusionClassifier from pretrained parts on disk (text folder, image backbone)
    TrainSettings, train_head       train the fusion head on frozen encoders (or all of it)
    evaluate_torch                  PyTorch metrics on a labelled data set
    export_bundle                   three ONNX files + tokenizer + manifest, checked against PyTorch

Names load on first use, so importing this package imports nothing heavy."""

import importlib

__all__ = ["FusionConfig", "FusionClassifier", "build_model", "TrainSettings", "train_head", "evaluate_torch",
           "export_bundle"]

_HOME = {"FusionConfig": "model", "FusionClassifier": "model", "build_model": "factory", "TrainSettings": "train",
         "train_head": "train", "evaluate_torch": "train", "export_bundle": "bundle_writer"}


def __getattr__(name):
    if name in _HOME:
        return getattr(importlib.import_module(f"fusionrt.export.{_HOME[name]}"), name)
    raise AttributeError(f"module 'fusionrt.export' has no attribute '{name}'")
