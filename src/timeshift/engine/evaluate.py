"""Evaluation: the validation loop (:func:`evaluate`, used by training and testing), testing
checkpoints (metrics, confusion, predictions, ensembles, two streams); predicting videos is
:mod:`timeshift.engine.predict`."""

from __future__ import annotations

import csv
import dataclasses
import logging
import statistics
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from timeshift.data.formats import Annotations, SampleRecord, read_annotations
from timeshift.engine.backend import Calibration, inference_model, load_for_inference
from timeshift.engine.distributed import SINGLE_PROCESS, DistInfo, all_gather_tensors
from timeshift.engine.figures import plot_confusion
from timeshift.engine.fusion import (
    FUSION_MODES,
    TSN_WEIGHTS,
    FusionError,
    ScoreSet,
    align_videos,
    check_labels,
    check_weights,
    fuse_scores,
    load_scores,
    save_scores,
    video_ids,
)
from timeshift.engine.loaders import eval_dataset, eval_loader
from timeshift.engine.metrics import classification_report, json_dumps
from timeshift.models.checkpoints import check_writable as _check_writable
from timeshift.models.preprocessing import InputConfig, resolve_input_config

__all__ = [
    "EARLY_FRACTIONS",
    "EvalOptions",
    "EvalResult",
    "early_recognition",
    "evaluate",
    "evaluate_checkpoints",
    "evaluate_two_stream",
    "fuse_saved_scores",
    "measure_latency",
    "mixed_precision",
]

_logger = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """What :func:`evaluate` returns: the metrics and the per-sample scores behind them."""

    report: dict  # classification_report: top1, top5, mean_class_accuracy, confusion, ...
    scores: torch.Tensor  # (N, K) averaged over views, in dataset order
    labels: torch.Tensor
    indices: torch.Tensor
    failed: int = 0


def mixed_precision(device: torch.device, enabled: bool) -> AbstractContextManager:
    """fp16 autocast on CUDA when ``enabled``; plain fp32 elsewhere (bf16 is not faster on CPU)."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    *,
    device: torch.device,
    num_classes: int,
    info: DistInfo = SINGLE_PROCESS,
    amp: bool = True,
    progress: bool = True,
) -> EvalResult:
    """Scores averaged over each sample's views (clips x crops), gathered from all processes.

    Logits are averaged over views, as the reference test script does. ``loader`` yields
    ``(indices, views, labels)`` batches (``None`` for a batch whose videos all failed).
    """
    from tqdm.auto import tqdm

    model.eval()
    all_scores, all_labels, all_indices = [], [], []
    for batch in tqdm(
        loader,
        desc="evaluating",
        unit="batch",
        leave=False,
        disable=None if progress and info.is_main else True,  # None: off when not a terminal
    ):
        if batch is None:
            continue
        indices, views, labels = batch
        views = views.to(device, non_blocking=True)
        if views.dim() == 5:  # (N, T, C, H, W): one view
            views = views.unsqueeze(1)
        n, v = views.shape[:2]
        with mixed_precision(device, amp):
            logits = model(views.flatten(0, 1)).float()
        all_scores.append(logits.view(n, v, -1).mean(dim=1).cpu())
        all_labels.append(labels)
        all_indices.append(indices)
    scores = torch.cat(all_scores) if all_scores else torch.zeros(0, num_classes)
    labels = torch.cat(all_labels) if all_labels else torch.zeros(0, dtype=torch.long)
    indices = torch.cat(all_indices) if all_indices else torch.zeros(0, dtype=torch.long)
    scores = all_gather_tensors(scores, info)
    labels = all_gather_tensors(labels, info)
    indices = all_gather_tensors(indices, info)
    order = indices.argsort()
    scores, labels, indices = scores[order], labels[order], indices[order]
    failed = int(loader.dataset.failed.sum()) if hasattr(loader.dataset, "failed") else 0
    return EvalResult(
        classification_report(scores, labels, num_classes), scores, labels, indices, failed=failed
    )


@dataclass
class EvalOptions:
    """The test protocol: 1 clip x centre crop for efficiency tables; several clips x 3 crops at
    full resolution for accuracy tables.

    ``clips``, ``crops``, ``full_res`` and ``dense`` left at ``None`` take the protocol the
    checkpoint records (``meta["sampling"]``: the published one for registry weights, the
    recipe's ``eval`` / ``data.dense`` for trained ones), else 1 clip, 1 centre crop,
    uniform sampling (:meth:`for_checkpoint`)."""

    clips: int | None = None
    crops: int | None = None
    full_res: bool | None = None
    dense: bool | None = None
    twice: bool = False
    batch_size: int = 4
    workers: int = 2
    observed: float = 1.0  # sample from the first part of each video only (early recognition)
    online: bool = False  # stream each clip frame by frame through the online model
    drop_future: bool = False  # with online: a bidirectional model, future channels zeroed
    backend: str = "auto"  # auto, eager, compile, onnxruntime, openvino (engine.backend)
    memory_format: str = "auto"  # auto (channels_last), contiguous, channels_last
    precision: str = "fp32"  # fp32, bf16 (OpenVINO), int8 (a quantised export)
    calibration: Calibration | None = None  # int8: the clips it is calibrated on

    def for_checkpoint(self, meta: dict) -> EvalOptions:
        """These options with what they leave open taken from the checkpoint's ``sampling``
        (a recorded ``twice``, the reference's ``twice_sample``, is its 2 clips: it applies
        when neither clips nor dense sampling are given)."""
        recorded = dict(meta.get("sampling") or {})
        if recorded.get("twice") and not self.twice:
            if self.clips is None and self.dense is None:
                return dataclasses.replace(
                    self,
                    clips=1,
                    twice=True,
                    dense=False,
                    **self._open("crops", "full_res", recorded=recorded),
                )
            recorded.pop("clips", None)
        return dataclasses.replace(self, **self._open(*PROTOCOL_DEFAULTS, recorded=recorded))

    def _open(self, *keys: str, recorded: dict) -> dict:
        """The value of each of ``keys``: given here, else recorded, else the default."""
        chosen = {}
        for key in keys:
            value = getattr(self, key)
            if value is None:
                value = recorded.get(key)
            chosen[key] = PROTOCOL_DEFAULTS[key] if value is None else value
        return chosen


PROTOCOL_DEFAULTS = {"clips": 1, "crops": 1, "full_res": False, "dense": False}


def _protocol(options: EvalOptions, meta: dict) -> dict:
    """The protocol a summary reports: the options as run on this checkpoint, plain data."""
    return dataclasses.asdict(options.for_checkpoint(meta))


def _meta(model: nn.Module, path) -> dict:
    meta = model.checkpoint_meta
    if not meta.get("classes"):
        raise ValueError(f"{path} stores no class names (meta.classes); save it with 'train'")
    return meta


def _preprocessing(inputs: InputConfig) -> dict:
    """``eval_dataset``'s preprocessing arguments for a model's input configuration."""
    return {
        "size": inputs.input_size,
        "scale_size": inputs.scale_size,
        "mean": inputs.mean,
        "std": inputs.std,
        "modality": inputs.modality,
        "new_length": inputs.new_length,
    }


def _model_scores(
    model,
    meta,
    ann: Annotations,
    options: EvalOptions,
    device,
    progress,
    flow_settings=None,
    arrays=None,
):
    """Test-protocol scores of ``model`` on ``ann`` (``flow_settings``: a flow model's videos
    whose flow is computed on the fly; ``arrays``: records read from frames in memory)."""
    options = options.for_checkpoint(meta)
    dataset, model = scoring_setup(
        model, meta, ann, options, device, flow_settings=flow_settings, arrays=arrays
    )
    loader = eval_loader(dataset, batch_size=options.batch_size, workers=options.workers)
    return evaluate(model, loader, device=device, num_classes=model.num_classes, progress=progress)


def scoring_setup(
    model, meta, ann: Annotations, options: EvalOptions, device, flow_settings=None, arrays=None
):
    """``(dataset, runnable)`` of the test protocol: the dataset of ``ann`` decoding each video
    into its views (clips x crops), and ``model`` prepared to score them as ``options`` say
    (backend, precision, online streaming; mirrored views unmirrored through the flip map)."""
    from timeshift.engine.loaders import UnmirroredViews, direction_protocol

    options = options.for_checkpoint(meta)
    # direction-sensitive labels, decided before any decoding: dense clips never wrap out of
    # order, and mirrored 10-crop views are swapped back through the flip map (or refused)
    dense, flip_map, mirrored = direction_protocol(
        meta,
        num_segments=model.num_segments,
        crops=options.crops,
        clips=options.clips,
        dense=options.dense,
        twice=options.twice,
    )
    inputs = resolve_input_config(model, meta=meta)
    dataset = eval_dataset(
        ann,
        num_segments=model.num_segments,
        **_preprocessing(inputs),
        clips=options.clips,
        crops=options.crops,
        full_res=options.full_res,
        twice=options.twice,
        dense=dense,
        observed=options.observed,
        flow_settings=flow_settings,
        arrays=arrays,
    )
    if options.online:
        from timeshift.online import StreamedClips

        if options.precision != "fp32":
            raise ValueError("--online streams in PyTorch fp32: leave --precision out")
        # the online model streams frame by frame in PyTorch
        model = StreamedClips(model, drop_future=options.drop_future)
    else:
        # full resolution crops at the resized size (see eval_transforms)
        size = inputs.scale_size if options.full_res else inputs.input_size
        model = inference_model(
            model,
            backend=options.backend,
            memory_format=options.memory_format,
            device=device,
            size=size,
            precision=options.precision,
            calibration=options.calibration,
        )
    if flip_map is not None:
        _logger.info("direction-sensitive classes: mirrored views scored through the flip map")
        model = UnmirroredViews(model, mirrored=mirrored, flip_map=flip_map)
    return dataset, model


def _check_fusion(mode: str, weights: Sequence[float] | None, count: int) -> None:
    """Fusion options checked before any work, not after the evaluation."""
    if mode not in FUSION_MODES:
        raise FusionError(f"fusion mode must be one of {list(FUSION_MODES)}, got {mode!r}")
    if weights is not None:
        check_weights(weights, count)


def _load_models(checkpoints: Sequence[str | Path], device: torch.device) -> tuple[list, list]:
    """The models of ``checkpoints`` and their class names (the same for all, or an error)."""
    models = [(path, load_for_inference(path).to(device).eval()) for path in checkpoints]
    classes = _meta(models[0][1], checkpoints[0])["classes"]
    for path, model in models[1:]:
        if _meta(model, path)["classes"] != classes:
            raise ValueError(f"{path} was trained on other classes than {checkpoints[0]}")
    return models, classes


def load_stream_pair(rgb_checkpoint, flow_checkpoint, device: torch.device) -> tuple[list, list]:
    """The ``(path, model)`` of an RGB and a flow checkpoint and their common class names.

    Raises:
        FusionError: a checkpoint is not of its stream's modality.
        ValueError: the two were trained on other classes.
    """
    models, classes = _load_models([rgb_checkpoint, flow_checkpoint], device)
    for (path, model), expected in zip(models, ("rgb", "flow"), strict=True):
        found = resolve_input_config(model).modality
        if found != expected:
            raise FusionError(
                f"{path} is a model of modality {found!r} where the {expected} stream is "
                "expected; give the RGB checkpoint first and the flow checkpoint with --flow"
            )
    return models, classes


def _test_annotations(data, root, classes: list[str]) -> Annotations:
    # labels from the checkpoint's classes (a folder's sub-folders by name); fails before any
    # work on unlabelled (-1) lines or when most listed paths are missing
    ann = read_annotations(data, root=root, classes=classes, labelled=True)
    if not ann.records:
        raise ValueError(f"{data}: no samples to test")
    bad = [r for r in ann.records if not 0 <= r.label < len(classes)]
    if bad:
        raise ValueError(
            f"{data}: label {bad[0].label} of {bad[0].path} is not one of the "
            f"{len(classes)} classes of the checkpoint"
        )
    return ann


def _video_logits(path, model, ann: Annotations, options, device, progress):
    """``(N, K)`` logits in list order (NaN rows for unreadable videos) and the unreadable
    indices."""
    result = _model_scores(model, _meta(model, path), ann, options, device, progress)
    full = torch.full((len(ann.records), model.num_classes), float("nan"))
    full[result.indices] = result.scores
    return full, set(range(len(ann.records))) - set(result.indices.tolist())


def _readable(failed: set[int], count: int, data) -> torch.Tensor:
    keep = torch.tensor([i not in failed for i in range(count)])
    if not keep.any():
        raise ValueError(
            f"{data}: no video of the {count} listed could be read (the log names "
            "each one and its cause); nothing was evaluated"
        )
    return keep


def _score_set(ann: Annotations, keep, scores, *, modality: str, meta: dict) -> ScoreSet:
    ids = [v for v, k in zip(video_ids(ann), keep.tolist(), strict=True) if k]
    labels = torch.tensor([r.label for r in ann.records])[keep]
    return ScoreSet(ids, labels, list(ann.classes), scores, modality=modality, meta=meta)


def _source(checkpoint, data) -> dict:
    return {"source": str(checkpoint), "checkpoints": [str(checkpoint)], "data": str(data)}


def _with_classes(summary: dict, report, classes: list[str]) -> dict:
    """The returned summary: what metrics.json holds plus the per-class results."""
    return {**summary, **{k: report[k] for k in ("per_class", "support")}, "classes": classes}


def _metrics(report) -> dict:
    return {k: report[k] for k in ("top1", "top5", "mean_class_accuracy")}


def evaluate_checkpoints(
    checkpoints: Sequence[str | Path],
    data: str | Path,
    *,
    root: str | Path | None = None,
    options: EvalOptions | None = None,
    output_dir: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    fuse: str = "softmax",
    fusion_weights: Sequence[float] | None = None,
) -> dict:
    """Evaluate one checkpoint, or several fused by score (an ensemble, e.g. TSM 8f + 16f:
    by default softmax probabilities averaged; ``fuse="logits"`` and ``fusion_weights`` as
    :func:`~timeshift.engine.fusion.fuse_scores`). Writes metrics.json, per_class.csv,
    confusion.csv/png, predictions.json and the per-video scores (scores.npz, for
    ``timeshift fuse``) to ``output_dir`` when given.

    ``output_dir`` is checked for writing before any work (``OSError`` naming it); if writing
    the files fails anyway, the summary is still returned, with ``output_error`` saying what
    was not written. Raises ``ValueError`` when no video could be read (nothing to score)."""
    if not checkpoints:
        raise ValueError("no checkpoint given")
    if output_dir is not None:
        check_writable(output_dir)  # before the work, not after an hour of evaluation
    if len(checkpoints) > 1:
        _check_fusion(fuse, fusion_weights, len(checkpoints))
    options = options or EvalOptions()
    torch_device = torch.device(device)
    models, classes = _load_models(checkpoints, torch_device)
    ann = _test_annotations(data, root, classes)
    runs = [_video_logits(p, m, ann, options, torch_device, progress) for p, m in models]
    keep = _readable(set().union(*(failed for _, failed in runs)), len(ann.records), data)
    modality = resolve_input_config(models[0][1]).modality
    sets = [
        _score_set(ann, keep, logits[keep], modality=modality, meta={"source": str(path)})
        for (path, _), (logits, _) in zip(models, runs, strict=True)
    ]
    if len(sets) == 1:
        result = sets[0]
    else:
        weights = fusion_weights if fusion_weights is not None else [1.0] * len(sets)
        result = fuse_scores(sets, weights=weights, mode=fuse)
    report = result.report()
    summary = {
        "checkpoints": [str(p) for p in checkpoints],
        "data": str(data),
        "protocol": _protocol(options, _meta(models[0][1], models[0][0])),
        "samples": int(keep.sum()),
        "unreadable": int((~keep).sum()),
        **_metrics(report),
    }
    if len(sets) > 1:
        summary["fusion"] = result.meta["fusion"]
    result.meta = {**result.meta, "checkpoints": summary["checkpoints"], "data": str(data)}
    records = [r for r, k in zip(ann.records, keep.tolist(), strict=True) if k]
    _write_outputs(output_dir, summary, report, classes, records, {"scores.npz": result})
    return _with_classes(summary, report, classes)


def evaluate_two_stream(
    rgb_checkpoint: str | Path,
    rgb_data: str | Path,
    flow_checkpoint: str | Path,
    flow_data: str | Path,
    *,
    rgb_root: str | Path | None = None,
    flow_root: str | Path | None = None,
    weights: Sequence[float] = (TSN_WEIGHTS["rgb"], TSN_WEIGHTS["flow"]),
    mode: str = "logits",
    options: EvalOptions | None = None,
    output_dir: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Test a two-stream pair: the RGB checkpoint on ``rgb_data``, the flow checkpoint on the
    flow list ``flow_data`` (the same videos, matched by id: a flow folder is named after the
    video's path without extension), and their fusion (TSN: logits, weights 1 : 1.5).

    Every stream is scored on the videos readable in both. Returns the fusion's metrics at the
    top level (as :func:`evaluate_checkpoints`) and each stream's under ``streams``. Writes to
    ``output_dir``: metrics.json, per_class.csv, confusion.csv/png and predictions.json of the
    fusion, and the per-video scores scores.npz (fused), scores_rgb.npz, scores_flow.npz.

    Raises:
        FusionError: the lists name other videos or labels (the first mismatching line), the
            checkpoints other classes, or a checkpoint is not of its stream's modality.
    """
    if output_dir is not None:
        check_writable(output_dir)
    _check_fusion(mode, weights, 2)
    options = options or EvalOptions()
    torch_device = torch.device(device)
    models, classes = load_stream_pair(rgb_checkpoint, flow_checkpoint, torch_device)
    anns = [
        _test_annotations(d, r, classes) for d, r in ((rgb_data, rgb_root), (flow_data, flow_root))
    ]
    order = _match_lists(anns, (rgb_data, flow_data))
    rgb_logits, rgb_failed = _video_logits(*models[0], anns[0], options, torch_device, progress)
    flow_logits, flow_failed = _video_logits(*models[1], anns[1], options, torch_device, progress)
    flow_logits = flow_logits[torch.as_tensor(order, dtype=torch.long)]
    failed = rgb_failed | {i for i, j in enumerate(order) if j in flow_failed}
    keep = _readable(failed, len(order), f"{rgb_data} / {flow_data}")
    streams = {
        name: _score_set(anns[0], keep, logits[keep], modality=name, meta=_source(path, data))
        for name, logits, path, data in (
            ("rgb", rgb_logits, rgb_checkpoint, rgb_data),
            ("flow", flow_logits, flow_checkpoint, flow_data),
        )
    }
    fused = fuse_scores([streams["rgb"], streams["flow"]], weights=weights, mode=mode)
    report = fused.report()
    summary = {
        "checkpoints": [str(rgb_checkpoint), str(flow_checkpoint)],
        "data": str(rgb_data),
        "flow_data": str(flow_data),
        "protocol": _protocol(options, _meta(models[0][1], models[0][0])),
        "samples": int(keep.sum()),
        "unreadable": int((~keep).sum()),
        **_metrics(report),
        "streams": {name: _metrics(s.report()) for name, s in streams.items()},
        "fusion": fused.meta["fusion"],
    }
    records = [r for r, k in zip(anns[0].records, keep.tolist(), strict=True) if k]
    scores = {
        "scores.npz": fused,
        "scores_rgb.npz": streams["rgb"],
        "scores_flow.npz": streams["flow"],
    }
    _write_outputs(output_dir, summary, report, classes, records, scores)
    return _with_classes(summary, report, classes)


def fuse_saved_scores(
    paths: Sequence[str | Path],
    *,
    weights: Sequence[float] | None = None,
    mode: str = "logits",
    output_dir: str | Path | None = None,
) -> dict:
    """Fuse score files of earlier test runs (``scores.npz``; ``scores_rgb.npz`` /
    ``scores_flow.npz`` of a two-stream run): the runs' metrics under ``streams`` and the
    fusion's at the top level, as :func:`evaluate_two_stream` returns them. Default weights:
    TSN's by modality (RGB 1, flow 1.5), equal among runs of one modality. Writes the test
    files of the fusion (metrics.json, ..., scores.npz) to ``output_dir`` when given."""
    if output_dir is not None:
        check_writable(output_dir)
    sets = [load_scores(p) for p in paths]
    fused = fuse_scores(sets, weights=weights, mode=mode)
    classes = fused.classes
    report = fused.report()
    summary = {
        "scores": [str(p) for p in paths],
        "samples": len(fused.video_ids),
        **_metrics(report),
        "streams": {str(p): _metrics(s.report()) for p, s in zip(paths, sets, strict=True)},
        "fusion": fused.meta["fusion"],
    }
    records = [
        SampleRecord(v, int(label)) for v, label in zip(fused.video_ids, fused.labels, strict=True)
    ]
    _write_outputs(output_dir, summary, report, classes, records, {"scores.npz": fused})
    return _with_classes(summary, report, classes)


def _match_lists(anns: Sequence[Annotations], names: Sequence) -> list[int]:
    """For each RGB record, the index of the same video in the flow list (labels checked)."""
    rgb, flow = anns
    order = align_videos(
        video_ids(rgb),
        video_ids(flow),
        reference_name=str(names[0]),
        other_name=str(names[1]),
        reference_lines=[r.line for r in rgb.records],
        other_lines=[r.line for r in flow.records],
    )

    def describe(i: int, j: int) -> str:
        return (
            f"{names[0]}:{rgb.records[i].line} and {names[1]}:{flow.records[j].line} "
            f"(video {video_ids(rgb)[i]!r})"
        )

    check_labels(
        torch.tensor([r.label for r in rgb.records]),
        torch.tensor([r.label for r in flow.records]),
        order,
        describe=describe,
    )
    return order


def _write_outputs(output_dir, summary, report, classes, records, scores: dict) -> None:
    """The files of a test run; a failure to write (a full disk) is logged and recorded in
    ``summary["output_error"]``, the evaluation is returned all the same."""
    if output_dir is None:
        return
    try:
        out = Path(output_dir)
        _write_test_outputs(out, summary, report, classes, records, scores[next(iter(scores))])
        for name, score_set in scores.items():
            save_scores(score_set, out / name)
    except OSError as exc:
        summary["output_error"] = f"could not write the outputs to {output_dir}: {exc}"
        _logger.error("%s", summary["output_error"])


def _write_test_outputs(out: Path, summary, report, classes, records, result: ScoreSet) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json_dumps(summary, indent=2) + "\n")
    with open(out / "per_class.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["class_index", "class", "samples", "accuracy"])
        for i, (name, support, acc) in enumerate(
            zip(classes, report["support"], report["per_class"], strict=True)
        ):
            writer.writerow([i, name, support, "" if np.isnan(acc) else f"{acc:.4f}"])
    confusion = report["confusion"]
    with open(out / "confusion.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *classes])
        for name, row in zip(classes, confusion, strict=True):
            writer.writerow([name, *row.tolist()])
    plot_confusion(
        confusion,
        classes,
        out / "confusion.png",
        title=f"top-1 {summary['top1']:.3f}, {summary['samples']} videos",
    )
    # softmax scores for every run (single, ensemble, fusion), the scores `predict` shows
    top = result.probabilities().topk(min(5, len(classes)), dim=1)
    predictions = [
        {
            "path": r.path,
            "label": r.label,
            "prediction": int(i[0]),
            "top5": [[int(c), float(s)] for c, s in zip(i, v, strict=True)],
        }
        for r, i, v in zip(records, top.indices.tolist(), top.values.tolist(), strict=True)
    ]
    (out / "predictions.json").write_text(json_dumps(predictions, indent=1) + "\n")


EARLY_FRACTIONS = tuple(round(0.1 * k, 1) for k in range(1, 11))


def early_recognition(
    checkpoints: Sequence[str | Path],
    data: str | Path,
    *,
    fractions: Sequence[float] = EARLY_FRACTIONS,
    root: str | Path | None = None,
    options: EvalOptions | None = None,
    output_dir: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> list[dict]:
    """Accuracy after observing the first 10%, 20%, ... 100% of each video (TSM Figure 6).

    For each fraction the clip's ``T`` segments are sampled from that first part of the video
    alone (fewer frames than segments repeat, as the reference sampling does). For a
    uni-directional model this is exactly what it predicts online, averaging its per-frame
    outputs, once that part has streamed by. Writes ``early.csv``, ``early.json`` and
    ``early.png`` to ``output_dir`` when given.
    """
    options = options or EvalOptions()
    if not fractions or not all(0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions must be in (0, 1], got {list(fractions)}")
    if output_dir is not None:
        check_writable(output_dir)
    rows = []
    for fraction in fractions:
        summary = evaluate_checkpoints(
            checkpoints,
            data,
            root=root,
            options=dataclasses.replace(options, observed=fraction),
            device=device,
            progress=progress,
        )
        rows.append(
            {
                "observed": fraction,
                "top1": summary["top1"],
                "top5": summary["top5"],
                "mean_class_accuracy": summary["mean_class_accuracy"],
                "samples": summary["samples"],
            }
        )
        _logger.info("observed %3.0f%%: top-1 %.4f", 100 * fraction, summary["top1"])
    if output_dir is not None:
        try:
            _write_early_outputs(Path(output_dir), rows, checkpoints)
        except OSError as exc:  # the rows are computed: return them, say what was not written
            error = f"could not write the outputs to {output_dir}: {exc}"
            _logger.error("%s", error)
            for row in rows:
                row["output_error"] = error
    return rows


def _write_early_outputs(out: Path, rows: list[dict], checkpoints) -> None:
    from timeshift.engine.figures import plot_early

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "early.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "early.json").write_text(json_dumps(rows, indent=2) + "\n")
    label = ", ".join(Path(c).parent.name or Path(c).stem for c in checkpoints)
    plot_early({label: rows}, out / "early.png")


def check_writable(folder: str | Path) -> Path:
    """The ``--output`` folder of ``test``, checked before the work, not after an hour of it."""
    return _check_writable(
        folder, what="output folder", hint="; choose another --output or free the disk"
    )


@torch.no_grad()
def measure_latency(
    model: nn.Module, *, frames: int, size: int, repeats: int = 20, warmup: int = 3
) -> float:
    """Median milliseconds for one clip ``(1, T, C, S, S)`` in eval mode (batch 1; C is 3 for
    RGB, ``2 * new_length`` for flow)."""
    model.eval()
    channels = int(getattr(model, "in_chans", 3))
    x = torch.randn(1, frames, channels, size, size, device=next(model.parameters()).device)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3
