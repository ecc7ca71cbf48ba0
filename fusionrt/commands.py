"""What each CLI command does; heavy packages are imported only by the command that needs them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fusionrt.runtime.errors import DataError, InputError
from fusionrt.runtime.optional import require

__all__ = ["cmd_data", "cmd_train", "cmd_export", "cmd_classify", "cmd_evaluate", "cmd_info", "cmd_calibrate", "cmd_bench",
           "cmd_camera", "cmd_build", "cmd_tune", "cmd_triton"]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _dump(data) -> None:
    print(json.dumps(data, indent=2, default=str))


def _argument_text(text: str, option: str) -> str:
    """A command-line text as valid Unicode: bytes that were not UTF-8 reach Python as lone surrogates; they are
    replaced with U+FFFD, and we say so."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        fixed = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        _say(f"note: {option} was not valid UTF-8; its undecodable bytes were replaced with U+FFFD: {fixed!r}")
        return fixed


def cmd_data(args) -> int:
    from fusionrt.data.emoji import convert_emoji_dataset

    result = convert_emoji_dataset(args.source, args.out, args.test_fraction, args.seed)
    _say(f"wrote {result['train']} and {result['test']}: {len(result['classes'])} classes, "
         f"{sum(result['counts'].values())} samples")
    return 0


def cmd_train(args) -> int:
    require("torch", "training")
    from fusionrt.data.dataset import LabeledDataset
    from fusionrt.export.factory import build_model
    from fusionrt.export.train import TrainSettings, evaluate_torch, train_head

    train = LabeledDataset.read(args.data)
    held_out = LabeledDataset.read(args.eval_data) if args.eval_data else None
    if len(train.labels) < 2:
        raise DataError(f"{args.data}: expected 2 or more labels to train a classifier, found {list(train.labels)}.")
    head = tuple(int(w) for w in args.head.split(",") if w.strip())
    model = build_model(train.labels, args.text_model, args.image_backbone, args.image_weights,
                        args.pooling, args.max_seq_len, head, args.image_size, seed=args.seed, mean=args.mean,
                        std=args.std, channel_order="bgr" if args.bgr else "rgb")
    settings = TrainSettings(args.epochs, args.batch_size, args.lr, seed=args.seed, unfreeze=args.unfreeze)
    _say(f"training on {len(train)} samples, {len(train.labels)} classes ({args.image_backbone} + {args.text_model})")
    stats = train_head(model, train, settings)
    model.save_pretrained(args.out)
    report = {"checkpoint": args.out, **stats}
    if held_out is not None:
        metrics = evaluate_torch(model, held_out)
        metrics.pop("predictions")
        report["held_out"] = metrics
        _say(f"held-out: accuracy {metrics['accuracy']:.4f}, macro recall {metrics['macro_recall']:.4f}, "
             f"macro F1 {metrics['macro_f1']:.4f} ({metrics['count']} samples)")
    (Path(args.out) / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    _say(f"checkpoint written to {args.out}")
    return 0


def _example_inputs(data_path, count: int):
    """Real (image, text) samples for export; without a data set, two built-in scenes."""
    if data_path:
        from fusionrt.data.dataset import LabeledDataset

        data = LabeledDataset.read(data_path).head(max(2, count))
        return [s.image for s in data], [s.text for s in data]
    from fusionrt.data.samples import sample_images

    images = sample_images()
    return images, ["a photo of a street scene", "a close-up of an object on a table"][: len(images)]


def cmd_export(args) -> int:
    require("torch", "export")
    require("onnx", "export")
    from fusionrt.export.bundle_writer import export_bundle
    from fusionrt.export.model import FusionClassifier
    from fusionrt.runtime.manifest import Profile

    model = FusionClassifier.from_pretrained(args.checkpoint, allow_changed_module=args.allow_changed_module)
    profile = Profile(tuple(args.batch), tuple(args.seq)) if args.seq else \
        Profile.for_text(model.config.max_seq_len, args.batch)
    images, texts = _example_inputs(args.data, args.samples)
    _say(f"exporting {args.checkpoint} to {args.out} ({args.exporter} exporter, {len(images)} parity samples)")
    bundle = export_bundle(model, args.out, images, texts, profile,
                           dynamo=args.exporter == "dynamo", tolerance=args.tolerance, overwrite=args.overwrite)
    for check in bundle.manifest.parity["checks"]:
        _say(f"  parity {check['component']}.{check['output']}: max |diff| {check['max_abs_diff']:.2e} "
             f"(tolerance {check['tolerance']:.0e})")
    _say(f"bundle written to {args.out}")
    return 0


def cmd_classify(args) -> int:
    from fusionrt.runtime.pipeline import Pipeline

    with Pipeline.load(args.bundle, backend=args.backend, precision=args.precision, max_pixels=args.max_pixels) as pipe:
        pred = pipe.classify(args.image, _argument_text(args.text, "--text"))
        if args.json:
            _dump({**pred.to_dict(pipe.labels), "backend": pipe.backend_name, "backend_reason": pipe.backend_reason,
                   "precision": pipe.precision, "precision_reason": pipe.precision_reason,
                   **({"tuning": pipe.tuning.to_dict()} if pipe.tuning is not None else {})})
        else:
            print(f"{pred.label}\t{pred.score:.4f}")
    return 0


def cmd_evaluate(args) -> int:
    from fusionrt.data.dataset import LabeledDataset
    from fusionrt.data.evaluate import evaluate_pipeline
    from fusionrt.runtime.pipeline import Pipeline

    data = LabeledDataset.read(args.data)
    model = None
    if args.checkpoint:  # loaded first: a checkpoint that does not load fails before any evaluation runs
        require("torch", "evaluating the PyTorch checkpoint")
        from fusionrt.export.model import FusionClassifier

        model = FusionClassifier.from_pretrained(args.checkpoint, allow_changed_module=args.allow_changed_module)
    rows, seen = {}, []
    if model is not None:
        from fusionrt.export.train import evaluate_torch

        rows["PyTorch (fp32)"] = evaluate_torch(model, data)
    for precision in ("fp32", args.precision):  # the bundle at FP32, and at the policy (or the precision asked)
        with Pipeline.load(args.bundle, backend=args.backend, precision=precision) as pipe:
            if pipe.precision in seen:
                continue
            seen.append(pipe.precision)
            rows[f"bundle ({pipe.backend_name}, {_precision_text(pipe.precision)})"] = evaluate_pipeline(pipe, data)
    reference = next(iter(rows.values()))["predictions"]  # PyTorch FP32, else the bundle's FP32
    for name, result in rows.items():
        result["agreement"] = sum(a == b for a, b in zip(reference, result["predictions"])) / len(data)
    _say(f"top-1 agreement against {next(iter(rows))}: " + ", ".join(
        f"{name} {round(r['agreement'] * len(data))}/{len(data)}" for name, r in list(rows.items())[1:]))
    print(_metrics_table(rows))
    if args.report:
        report = {name: {k: v for k, v in r.items() if k != "predictions"} for name, r in rows.items()}
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps({"data": args.data, "results": report}, indent=2) + "\n")
    return 0


def _precision_text(precision) -> str:
    from fusionrt.runtime.precision import format_precision

    values = set(precision.values())
    return values.pop() if len(values) == 1 else format_precision(precision)


def _metrics_table(rows: dict) -> str:
    reference = next(iter(rows))
    lines = [f"| model | accuracy | macro recall | macro F1 | agreement with {reference} | samples |",
             "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {100 * r['accuracy']:.2f} % | {100 * r['macro_recall']:.2f} % | "
                     f"{100 * r['macro_f1']:.2f} % | {100 * r['agreement']:.2f} % | {r['count']} |")
    return "\n".join(lines)


def cmd_info(args) -> int:
    from fusionrt.runtime.bundle import Bundle
    from fusionrt.runtime.cpu import cpu_kind
    from fusionrt.runtime.selection import select

    bundle = Bundle.open(args.bundle)
    checked = bundle.verify()
    m = bundle.manifest
    auto = select(bundle, "auto", None, True, True, {})  # measured here once, then from the cache
    summary = {
        "backend_auto": {"backend": auto.backend, "why": auto.backend_reason,
                         "precision": auto.precision, "precision_reason": auto.precision_reason,
                         **({"tuning": auto.tuning.to_dict()} if auto.tuning is not None else {})},
        "cpu": cpu_kind().to_dict(),
        "bundle": str(bundle.root),
        "labels": list(m.labels),
        "precision": dict(m.precision),
        "precision_reason": m.precision_reason,
        "policies": m.to_dict()["policies"],
        "components": {name: {"files": sorted(c.files), "inputs": [t.to_dict() for t in c.inputs],
                              "outputs": [t.to_dict() for t in c.outputs],
                              "engines": [e.path for e in c.engines]} for name, c in m.components.items()},
        "profile": m.profile.to_dict(),
        "parity_max_abs_logit_diff": m.parity.get("max_abs_logit_diff"),
        "fidelity": m.fidelity.get("summary", {}),
        "producer": dict(m.producer),
        "files_checked": len(checked),
    }
    from fusionrt.runtime.backends.openvino import int8_source
    from fusionrt.runtime.resolve import resolve

    summary["openvino_int8"] = dict(zip(("flavour", "why"), int8_source(m)))
    # OpenVINO's 16-bit float on this CPU (fp16's; BF16 only where its kernels may use it), and the float under its
    # INT8 parts here, as the int8-ov policy was judged
    summary["openvino_int8"]["cpu_float"] = resolve("openvino", "fp16", "CPU").float_precision
    summary["openvino_int8"]["int8_float"] = resolve("openvino", "int8", "CPU",
                                                     int8_float=m.int8_float_for("int8-ov")).float_precision
    if args.json:
        _dump(summary)
        return 0
    print(f"bundle     {summary['bundle']}  ({len(checked)} files, sha256 ok)")
    print(f"labels     {len(m.labels)}: {', '.join(m.labels)}")
    if m.policies:
        for target, policy in m.policies.items():
            print(f"precision  {target}: {_precision_text(m.precision_for(target))}  ({m.reason_for(target)}); "
                  f"{len(policy.candidates)} candidates")
    else:
        print(f"precision  {_precision_text(m.precision)}  ({m.precision_reason})")
    print(f"profile    batch {list(m.profile.batch)}  seq {list(m.profile.seq)}")
    print(f"backend    auto here: {auto.backend} {_precision_text(auto.precision)}  ({auto.backend_reason})")
    print(f"cpu        {cpu_kind().label}")
    ov_int8 = summary["openvino_int8"]
    print(f"openvino   int8 from {ov_int8['flavour'] or 'none'}: {ov_int8['why']}; on this CPU the float under it "
          f"{ov_int8['int8_float']}, fp16 {ov_int8['cpu_float']}")
    for name, comp in summary["components"].items():
        ins = ", ".join(f"{t['name']}{t['shape']}:{t['dtype']}" for t in comp["inputs"])
        outs = ", ".join(f"{t['name']}{t['shape']}" for t in comp["outputs"])
        print(f"{name:14s} {ins} -> {outs}  files {comp['files']}  engines {len(comp['engines'])}")
    if summary["parity_max_abs_logit_diff"] is not None:
        print(f"parity     max |logit diff| ONNX vs PyTorch {summary['parity_max_abs_logit_diff']:.2e}")
    return 0


def cmd_calibrate(args) -> int:
    require("onnxruntime.quantization", "calibration")
    from fusionrt.calibration.calibrate import calibrate_bundle
    from fusionrt.calibration.fidelity import fidelity_markdown
    from fusionrt.calibration.criterion import Criterion

    report = calibrate_bundle(args.bundle, args.data, args.eval_data, args.method, args.samples, args.precision,
                              Criterion(args.min_accuracy_ratio, args.alpha, args.min_agreement),
                              openvino_linear=args.openvino_linear)
    print(fidelity_markdown(report))
    return 0


def cmd_bench(args) -> int:
    from fusionrt.benchmarks.harness import bench
    from fusionrt.benchmarks.report import machine_info, markdown_table, plot_rows

    if bool(args.bundle) == bool(args.arch):
        raise InputError("bench: expected a BUNDLE or --arch NAME (one of them), "
                         f"found {'both' if args.bundle else 'neither'}.")
    bundle, checkpoint = args.bundle, args.checkpoint
    if args.arch:
        from fusionrt.benchmarks.arch import reference_bundle

        bundle, checkpoint = reference_bundle(args.arch, args.cache, say=_say)
    backends = args.backend.split(",") if args.backend else ["onnxruntime"] + (["torch"] if checkpoint else [])
    torch_model = None
    if "torch" in backends:
        if not checkpoint:
            raise InputError("--backend torch needs the bundle's weights in PyTorch: pass --checkpoint DIR (or use --arch).")
        require("torch", "the PyTorch baseline")
        from fusionrt.export.model import FusionClassifier

        torch_model = FusionClassifier.from_pretrained(checkpoint, allow_changed_module=args.allow_changed_module)
    images, texts = _example_inputs(args.data, 16)
    rows = bench(bundle, images, texts, tuple(backends), tuple(args.precision.split(",")),
                 tuple(int(b) for b in args.batch.split(",")), args.duration, args.seq, torch_model, args.device,
                 rounds=args.rounds)
    table = markdown_table(rows)
    info = machine_info()
    gpus = ", ".join(f"{g['name']} (driver {g['driver']})" for g in info["gpus"]) or "no GPU"
    print(f"{info['cpu']}; {gpus}\n{table}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        source = {"arch": args.arch} if args.arch else {"bundle": str(bundle), "checkpoint": checkpoint}
        (out / "bench.json").write_text(json.dumps({"machine": info, "source": source, "rows": rows}, indent=2) + "\n")
        (out / "bench.md").write_text(table + "\n")
        plot_rows(rows, out / "bench.png")
        _say(f"wrote {out / 'bench.json'}, bench.md and bench.png")
    return 0


def cmd_camera(args) -> int:
    from fusionrt.camera import run_cameras
    from fusionrt.runtime.pipeline import Pipeline

    texts = [_argument_text(args.text, "--text")] if args.text is not None else \
        [_argument_text(t, "--text-per-source") for t in args.text_per_source]
    if args.text_per_source and len(texts) != len(args.source):
        raise InputError(f"expected one --text-per-source for each of the {len(args.source)} --source options, "
                         f"found {len(texts)}.")
    if args.max_reconnects < -1:
        raise InputError(f"--max-reconnects: expected a count >= 0, or -1 for ever, found {args.max_reconnects}.")
    with Pipeline.load(args.bundle, backend=args.backend, precision=args.precision, text_cache=args.text_cache,
                       max_pixels=args.max_pixels) as pipe, _site(pipe, args) as site:
        if site is not None and site.url:
            _say(f"site: {site.url}/ (live view), {site.url}/metrics, /livez, /readyz")
        run_cameras(pipe, args.source, texts, args.headless, args.out, args.jsonl, args.policy, args.max_frames,
                    args.mosaic, say=_say, overwrite=args.overwrite,
                    max_reconnects=None if args.max_reconnects == -1 else args.max_reconnects, monitor=site)
    return 0


def _site(pipe, args):
    """The site around the camera run (fusionrt.monitor.Site) when any of its options is given; else a null one."""
    import contextlib

    if not (args.serve or args.mqtt or args.events or args.clips):
        return contextlib.nullcontext()
    from fusionrt.monitor import Site, SiteOptions

    return Site(pipe, SiteOptions(serve=args.serve, mqtt=args.mqtt, topic=args.topic, events=args.events,
                                  clips=args.clips, pre_s=args.pre, post_s=args.post, clips_max_mb=args.clips_max_mb,
                                  debounce=args.debounce, score_threshold=args.score_threshold,
                                  stale_after_s=args.stale_after))


def cmd_build(args) -> int:
    from fusionrt.engines.build import build_engines

    results = build_engines(args.bundle, args.target.replace("-", "_"), args.precision, args.batch, args.seq,
                            args.compute_capability, args.force, args.workspace, args.verbose, args.cuda_graphs,
                            args.contexts)
    for r in results:
        size = Path(args.bundle, r.record.path).stat().st_size / 2**20
        what = "unchanged, skipped" if r.skipped else f"built in {r.seconds:.1f} s"
        qdq = r.layers.get("QUANTIZE", 0) + r.layers.get("DEQUANTIZE", 0)
        floats = ", ".join(f"{n} {k}" for k, n in sorted(r.float_compute.items()))
        print(f"{r.component:14s} {r.record.precision:5s} {r.record.path}  {size:.1f} MiB  {what}"
              + (f"  ({qdq} Q/DQ layers)" if qdq else "") + (f"  float compute: {floats}" if floats else ""))
    return 0


def cmd_tune(args) -> int:
    from fusionrt.runtime.backends import CPU_BACKENDS, backend_class, usable_backends
    from fusionrt.runtime.bundle import Bundle
    from fusionrt.runtime.cpu import cpu_kind
    from fusionrt.runtime.precision import format_precision
    from fusionrt.runtime.tune import tune

    bundle = Bundle.open(args.bundle)
    names = [n for n in usable_backends(bundle)[0] if n in CPU_BACKENDS] if args.backend == "auto" else [args.backend]
    if not names:
        raise InputError("tune: no CPU backend (openvino, onnxruntime) can run here: install fusionrt[cpu].")
    backends = [(n, backend_class(n).Options.parse(f"'{n}'", {}).for_branches(not args.sequential)) for n in names]
    choice = tune(bundle, backends, force=args.force, say=_say)
    if args.json:
        _dump({"cpu": cpu_kind().to_dict(), **choice.to_dict()})
        return 0
    print(f"cpu      {cpu_kind().label}")
    print("| backend | precision | " + " | ".join(f"batch {b} ms" for b in choice.measured[0].ms) +
          " | batch-invariant here | may be chosen |")
    print("|---|---|" + "---|" * (len(choice.measured[0].ms) + 2))
    for m in choice.measured:
        print(f"| {m.backend} | {format_precision(m.precision)} | " + " | ".join(f"{v:.2f}" for v in m.ms.values()) +
              f" | {'yes' if m.invariant else 'no'} | {m.excluded or 'yes'} |")
    took = "from the cache" if choice.cached else f"measured in {choice.seconds:.1f} s"
    print(f"chosen   {choice.backend} {format_precision(choice.precision)}: {choice.why}")
    print(f"         ({took}; cache {choice.cache})")
    return 0


def cmd_triton(args) -> int:
    from fusionrt.serving.repository import RepositoryOptions, write_repository

    options = RepositoryOptions(platform=args.platform, max_batch=args.max_batch, instances=args.instances,
                                precision=args.precision, device=args.device, queue_delay_us=args.queue_delay_us,
                                seq_bucket=args.seq_bucket, engines=args.engines, threads=args.threads,
                                max_pixels=args.max_pixels)
    summary = write_repository(args.bundle, args.out, options, overwrite=args.overwrite)
    print(f"model repository at {args.out}: {', '.join(summary['models'])}")
    print(f"platform {summary['platform']}, {summary['instances']} x {summary['kind']} per part, max batch "
          f"{summary['max_batch']}, precision {_precision_text(summary['precision'])}")
    print(f"serve it: tritonserver --model-repository={Path(args.out).resolve()}  (README: 'Serve on Triton'); the "
          f"Python models need fusionrt in the server's Python (pip install 'fusionrt[cpu]' 'numpy<2')")
    return 0
