"""Ray Data batch inference: score the videos of a :class:`ray.data.Dataset` with timeshift.

:class:`RayPredictor` is a callable class for :meth:`ray.data.Dataset.map_batches`, built once
per actor from a checkpoint file or a registry name (it wraps
:class:`~timeshift.engine.scale.VideoScorer`, the scoring path of ``timeshift predict
--manifest``), and returns the same result columns as that command::

    path     string                               as in the input row
    top_k    list<struct<label, index, score>>    null for a video that failed
    error    string                               null when the video was scored
    features list<float>                          only with features=True
    timeline list<struct<label, score, start, end>>  only with timeline={...}

The batches it returns are Arrow tables with the schema of ``predict --output-format
parquet``, so :meth:`~ray.data.Dataset.write_parquet` writes real nested columns. A row is read
from its ``path`` column (a file, a frame folder, a ``file://`` or ``http(s)://`` URL; an
optional ``location`` column says where to read it when ``path`` is only its name), or scored
from a ``frames`` column of decoded frames, ``(F, H, W, 3)`` uint8, such as
:func:`frames_to_clips` makes from :func:`ray.data.read_videos`'s one row per frame.

Resources: a local ``ray.init()`` costs a few seconds, and on a 2-CPU machine an actor pool
whose actors each ask for a whole CPU leaves no CPU for the read tasks that feed it, and the
job stalls. :func:`actor_resources` (and so :func:`predict_dataset`) therefore asks for a fixed
pool of one actor per CPU, each with a fraction of a CPU, so that the pool leaves a CPU to the
rest of the pipeline.

Needs ``pip install 'timeshift[ray]'``; ``ray`` is imported when first used.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from timeshift.errors import TimeshiftError

__all__ = [
    "RayIntegrationError",
    "RayPredictor",
    "actor_resources",
    "frames_to_clips",
    "predict_dataset",
    "read_manifest",
    "rows_to_table",
]

_logger = logging.getLogger(__name__)

_EXTRA = "pip install 'timeshift[ray]'"


class RayIntegrationError(TimeshiftError):
    """Ray is missing, or a dataset lacks the columns the integration reads."""


def _ray():
    """The ``ray`` module (with Ray Data), or an error naming the extra to install."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise RayIntegrationError(f"the Ray Data integration needs Ray Data: {_EXTRA}") from None
    return ray


def _pyarrow():
    try:
        import pyarrow
    except ImportError:
        raise RayIntegrationError(f"the Ray Data integration needs pyarrow: {_EXTRA}") from None
    return pyarrow


# ------------------------------------------------------------------------------------------
# the predictor


class RayPredictor:
    """Scores batches of videos in a Ray actor; use with ``map_batches``.

    Args:
        checkpoint: a checkpoint file or a registry name (with its pretrained weights); read
            once, when the actor starts.
        top_k: classes per row.
        features: add a ``features`` column, the clip embedding before the classifier.
        threads: torch's intra-op threads in this actor (default: leave torch's setting;
            Ray sets ``OMP_NUM_THREADS`` from the actor's CPUs, one at least).
        **scorer_options: the other options of
            :class:`~timeshift.engine.scale.VideoScorer` (``device``, ``backend``,
            ``precision``, ``memory_format``, ``clips``, ``crops``, ``full_res``, ``dense``,
            ``twice``, ``batch_size``, ``timeline``: a ``timeline`` column, on path rows
            only, as the scorer reads the video's file again).

    Example::

        ds.map_batches(RayPredictor, fn_constructor_kwargs={"checkpoint": "model.pth"},
                       compute=ray.data.ActorPoolStrategy(size=2), num_cpus=0.5,
                       batch_size=8, batch_format="numpy")
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        *,
        top_k: int = 5,
        features: bool = False,
        threads: int | None = None,
        **scorer_options: Any,
    ) -> None:
        import torch

        from timeshift.engine.scale import VideoScorer

        if threads is not None:
            torch.set_num_threads(threads)
        # decoding happens here, in the actor: no DataLoader workers inside it
        scorer_options.setdefault("workers", 0)
        self.scorer = VideoScorer(checkpoint, top_k=top_k, features=features, **scorer_options)
        self.features = features
        self.timeline = getattr(self.scorer, "timeline", None) is not None
        _logger.info("RayPredictor ready: %s on %s", checkpoint, self.scorer.device)

    def __call__(self, batch: Any):
        """The result rows of ``batch`` (a dict of numpy arrays or a pandas DataFrame with a
        ``path`` column, and ``location`` or ``frames`` optionally), as an Arrow table."""
        columns = _columns(batch)
        if "path" not in columns:
            raise RayIntegrationError(
                f"RayPredictor reads a 'path' column; the batch has {sorted(columns)} (rename "
                "the column, e.g. ds.map(lambda r: {'path': r['text']}) after read_text)"
            )
        paths = [str(p) for p in columns["path"]]
        if "frames" in columns:
            decoded = [
                self.scorer.decode_frames(path, np.asarray(frames))
                for path, frames in zip(paths, columns["frames"], strict=True)
            ]
        else:
            locations = columns.get("location", paths)
            decoded = [
                self.scorer.decode(path, str(location) if location is not None else None)
                for path, location in zip(paths, locations, strict=True)
            ]
        rows = self.scorer.rows(decoded)
        return rows_to_table(rows, features=self.features, timeline=self.timeline)


def _columns(batch: Any) -> dict[str, Iterable]:
    """The columns of a numpy-dict or pandas batch, by name."""
    if isinstance(batch, dict):
        return batch
    if hasattr(batch, "columns"):  # a pandas DataFrame
        return {name: batch[name].tolist() for name in batch.columns}
    pa = _pyarrow()
    if isinstance(batch, pa.Table):
        return {name: batch.column(name).to_pylist() for name in batch.column_names}
    raise RayIntegrationError(
        f"RayPredictor takes numpy or pandas batches (batch_format='numpy' or 'pandas'), got "
        f"{type(batch).__name__}"
    )


def rows_to_table(rows: list[dict], *, features: bool = False, timeline: bool = False):
    """``VideoScorer.rows`` as an Arrow table with ``predict --output-format parquet``'s
    schema, less the optional columns not asked for (``features``, ``timeline``: the same
    columns in every batch); error rows have a null ``top_k``."""
    pa = _pyarrow()
    from timeshift.engine.scale import parquet_schema

    schema = parquet_schema()
    for name, wanted in (("features", features), ("timeline", timeline)):
        if not wanted and name in schema.names:
            schema = schema.remove(schema.get_field_index(name))
    data = {name: [row.get(name) for row in rows] for name in schema.names}
    return pa.Table.from_pydict(data, schema=schema)


# ------------------------------------------------------------------------------------------
# datasets in, datasets out


def read_manifest(
    source: str | os.PathLike,
    *,
    format: str = "auto",
    root: str | os.PathLike | None = None,
    override_num_blocks: int | None = None,
):
    """A Ray dataset with the ``path`` (as written) and ``location`` (what to open) of every
    video of a manifest that ``timeshift predict --manifest`` reads (list, paths, JSONL, CSV,
    Parquet or folder; relative paths resolved against ``root`` or the manifest's folder).

    Every line is checked first (:meth:`~timeshift.data.manifest.Manifest.count`), and the
    items are held by the driver until Ray takes them (about 200 bytes a video): for manifests
    of tens of millions of videos, read a Parquet file with a ``path`` column with
    :func:`ray.data.read_parquet` instead.
    """
    from pathlib import Path

    from timeshift.data.manifest import Manifest

    ray = _ray()
    manifest = Manifest(Path(source), format, Path(root) if root is not None else None)
    manifest.count()
    items = [{"path": item.path, "location": item.location} for item in manifest]
    return ray.data.from_items(items, override_num_blocks=override_num_blocks)


def actor_resources(
    *, actors: int | None = None, cpus: float | None = None, num_gpus: float | None = None
) -> dict:
    """``map_batches`` keyword arguments for a fixed pool of :class:`RayPredictor` actors that
    leaves a CPU to the read and write tasks of the pipeline.

    Ray's ``num_cpus`` is a scheduling share, not a limit: an actor asking for a whole CPU
    next to the read task that feeds it can leave that task unscheduled on a 2-CPU machine.
    The defaults give every actor a fraction of a CPU (``OMP_NUM_THREADS`` is then 1 in the
    actor) so that the pool takes the cluster's CPUs minus one.

    Args:
        actors: a fixed pool size (default: one per CPU of the cluster, or one per
            ``num_gpus`` share of its GPUs).
        cpus: CPUs each actor asks for (default: ``(CPUs - 1) / actors``, at most 1, at
            least 0.1).
        num_gpus: GPUs per actor (pass ``device="cuda"`` to the predictor too).
    """
    ray = _ray()
    resources = _cluster_resources(ray)
    total = resources.get("CPU", 1.0)
    if actors is None:
        if num_gpus:
            actors = max(1, int(resources.get("GPU", 0.0) / num_gpus))
        else:
            actors = max(1, int(total))
    if cpus is None:
        cpus = round(min(1.0, max(0.1, (total - 1.0) / actors)), 2)
    options = {"compute": ray.data.ActorPoolStrategy(size=actors), "num_cpus": cpus}
    if num_gpus:
        options["num_gpus"] = num_gpus
    return options


def _cluster_resources(ray) -> dict[str, float]:
    """The cluster's resources (this machine's CPUs before ``ray.init()``)."""
    if ray.is_initialized():
        return dict(ray.cluster_resources())
    return {"CPU": float(os.cpu_count() or 1)}


def predict_dataset(
    dataset,
    checkpoint: str | os.PathLike,
    *,
    batch_size: int = 8,
    actors: int | None = None,
    cpus: float | None = None,
    num_gpus: float | None = None,
    **predictor_options: Any,
):
    """``dataset`` (rows with ``path``, and ``location`` or ``frames``) scored by a pool of
    :class:`RayPredictor` actors: a lazy dataset of result rows (write it with
    ``write_parquet``).

    Args:
        dataset: the videos, e.g. :func:`read_manifest` or :func:`frames_to_clips`.
        checkpoint: a checkpoint file or registry name.
        batch_size: videos per call of an actor.
        actors, cpus, num_gpus: the pool (see :func:`actor_resources`); with ``num_gpus``
            pass ``device="cuda"`` too.
        **predictor_options: :class:`RayPredictor`'s options.
    """
    resources = actor_resources(actors=actors, cpus=cpus, num_gpus=num_gpus)
    return dataset.map_batches(
        RayPredictor,
        fn_constructor_kwargs={"checkpoint": str(checkpoint), **predictor_options},
        batch_size=batch_size,
        batch_format="numpy",
        **resources,
    )


def frames_to_clips(dataset, *, path_column: str = "path"):
    """Ray's one row per frame (:func:`ray.data.read_videos` with ``include_paths=True``:
    ``frame``, ``frame_index``, ``path``) as one row per video: ``path`` and ``frames``,
    ``(F, H, W, 3)`` uint8 in frame order, for :class:`RayPredictor`.

    Memory: the grouping is a shuffle, and every video then travels whole and decoded through
    the object store (a minute of 224x224 video at 30 frames/s is about 270 MB, of 1080p
    about 11 GB), where :class:`RayPredictor` on ``path`` rows decodes each video inside
    the actor and passes on only its result row. Prefer the path route for long or large
    videos; this one suits short clips, or frames that another Ray step made.
    """
    _ray()
    return dataset.groupby(path_column).map_groups(
        _stack_frames, fn_kwargs={"path_column": path_column}, batch_format="numpy"
    )


def _stack_frames(group: dict[str, np.ndarray], *, path_column: str) -> dict[str, np.ndarray]:
    """One video's frame rows -> one row with its frames stacked in ``frame_index`` order."""
    order = np.argsort(np.asarray(group["frame_index"]), kind="stable")
    frames = np.stack([np.asarray(group["frame"][i]) for i in order])
    return {"path": np.asarray([str(group[path_column][0])]), "frames": frames[None]}
