"""The TSN framework: a 2D backbone applied per frame, a linear head, averaged over segments."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = [
    "DEFAULT_NEW_LENGTH",
    "MODALITY_CHANNELS",
    "Recognizer",
    "check_input_dtype",
    "first_conv",
]

# channels of one frame of each input modality: an RGB image, or the x and y images of a flow
# field; a model input frame stacks ``new_length`` of them (the reference TSN's ``sample_len``)
MODALITY_CHANNELS = {"rgb": 3, "flow": 2}
# images stacked per frame when not given: the reference TSN/TSM default
# (``new_length = 1 if modality == "RGB" else 5``)
DEFAULT_NEW_LENGTH = {"rgb": 1, "flow": 5}


def first_conv(model: nn.Module) -> tuple[str, nn.Module]:
    """``(name, module)`` of the first convolution of ``model`` in ``modules()`` order: the
    first module owning a kernel ``weight`` (3 or more dims: Conv1d/2d/3d, an inflated conv).

    This is the reference TSN/TSM rule (``_construct_flow_model``, ``get_optim_policies``: the
    first ``nn.Conv*`` met), the layer that sees the input channels: its kernel is averaged for
    another modality and it trains faster on flow."""
    for name, module in model.named_modules():
        weight = module._parameters.get("weight")
        if weight is not None and weight.dim() >= 3:
            return name, module
    raise ValueError(f"{type(model).__name__} has no convolution")


def check_input_dtype(x: torch.Tensor, dtype: torch.dtype, *, what: str) -> None:
    """Raise a ``TypeError`` naming the expected dtype unless ``x`` has the model's ``dtype``
    (any float passes under autocast)."""
    if x.dtype == dtype or (x.is_floating_point() and torch.is_autocast_enabled()):
        return
    hint = (
        "raw pixels: normalise them first (timeshift.data transforms: /255, mean, std)"
        if not x.is_floating_point()
        else f"convert with {what}.to({dtype})"
    )
    raise TypeError(
        f"expected {str(dtype).removeprefix('torch.')} {what} (the model's parameter dtype), "
        f"got {str(x.dtype).removeprefix('torch.')}; {hint}"
    )


class Recognizer(nn.Module):
    """Video classifier ``(N, T, C, H, W) -> (N, num_classes)``.

    Frames are folded into the batch, run through the backbone (which may contain temporal
    modules), globally average-pooled, passed through dropout and a linear classifier, and the
    per-segment logits are averaged (TSN "avg" consensus). :meth:`forward_frames` and
    :meth:`forward_frame_head` are the per-frame body and head, which the online model streams
    (:class:`timeshift.online.FrameModel`).

    Args:
        backbone: module with ``forward_features`` on ``(N*T, C, H, W)`` and ``num_features``.
        num_classes: classifier outputs (``0``: no classifier, ``forward`` returns features).
        num_segments: frames per clip ``T`` the backbone's temporal modules were built for.
        dropout: dropout probability before the classifier.
        partial_bn: freeze every BatchNorm2d but the first (statistics and affine parameters),
            the reference's trick for fine-tuning with small batches.
        init_std: std of the normal init of the classifier weight (bias zero).
        modality: what a frame of the input is, ``"rgb"`` or ``"flow"``; the backbone's first
            conv takes ``MODALITY_CHANNELS[modality] * new_length`` channels.
        new_length: images stacked per frame (5 flow fields: ``x1, y1, ..., x5, y5``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        num_segments: int,
        dropout: float = 0.5,
        partial_bn: bool = False,
        init_std: float = 0.001,
        modality: str = "rgb",
        new_length: int = 1,
    ) -> None:
        super().__init__()
        if num_segments < 1:
            raise ValueError(f"num_segments must be >= 1, got {num_segments}")
        self.modality = modality
        self.new_length = new_length
        # filled in by create_model so that checkpoints can rebuild the model
        self.config: dict[str, Any] | None = None
        # what the checkpoint it was loaded from says (classes, input size, normalisation, ...);
        # filled in by load_model, read through timeshift.models.resolve_input_config
        self.checkpoint_meta: dict[str, Any] = {}
        self.backbone = backbone
        self.num_segments = num_segments
        self.num_features = int(backbone.num_features)
        self.in_chans = int(getattr(backbone, "in_chans", 3))
        stacked = MODALITY_CHANNELS[modality] * new_length
        # a plain RGB model keeps whatever its backbone takes (a user's greyscale network)
        if (modality, new_length) != ("rgb", 1) and self.in_chans != stacked:
            raise ValueError(
                f"the backbone takes {self.in_chans} input channels; {modality} frames with "
                f"new_length={new_length} have {stacked}"
            )
        self.init_std = init_std
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc: nn.Module = nn.Identity()
        self.reset_classifier(num_classes)
        self.partial_bn = False
        self.set_partial_bn(partial_bn)
        self.channels_last = False

    # -- classifier -------------------------------------------------------------------------
    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one of ``num_classes`` outputs."""
        self.num_classes = num_classes
        if num_classes > 0:
            fc = nn.Linear(self.num_features, num_classes)
            nn.init.normal_(fc.weight, 0.0, self.init_std)
            nn.init.zeros_(fc.bias)
            self.fc = fc
        else:
            self.fc = nn.Identity()
        if self.config is not None:
            self.config["num_classes"] = num_classes

    # -- partial BN ---------------------------------------------------------------------------
    def _frozen_norms(self) -> list[nn.BatchNorm2d]:
        norms = [m for m in self.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
        return norms[1:]

    def set_partial_bn(self, enabled: bool) -> None:
        """Freeze (or unfreeze) all BatchNorm2d layers of the backbone except the first."""
        self.partial_bn = enabled
        for m in self._frozen_norms():
            for p in (m.weight, m.bias):
                if p is not None:
                    p.requires_grad_(not enabled)
        self.train(self.training)

    def train(self, mode: bool = True) -> Recognizer:
        super().train(mode)
        if mode and getattr(self, "partial_bn", False):
            for m in self._frozen_norms():
                m.eval()
        return self

    def set_channels_last(self, enabled: bool = True) -> Recognizer:
        """Keep weights and frames in channels_last memory (faster convolutions on CPU and on
        tensor cores); inputs are converted as they are folded into the batch. 5-D (3D conv)
        weights use channels_last_3d."""
        formats = {4: torch.channels_last, 5: torch.channels_last_3d}  # 3D convs: I3D
        for tensor in [*self.parameters(), *self.buffers()]:
            if tensor.dim() in formats:
                fmt = formats[tensor.dim()] if enabled else torch.contiguous_format
                tensor.data = tensor.data.contiguous(memory_format=fmt)
        self.channels_last = enabled
        return self

    # -- forward --------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing():  # sizes are traced values here, and comparing them warns
            return
        expected = f"(N, T, C, H, W) with T={self.num_segments} (num_segments), C={self.in_chans}"
        if x.dim() != 5:
            wrong = f"a {x.dim()}-D tensor"
        elif x.shape[1] != self.num_segments:
            wrong = f"{x.shape[1]} frames per clip"
        elif x.shape[2] != self.in_chans:
            wrong = f"{x.shape[2]} channels per frame, not {self.in_chans} channels"
        else:
            wrong = ""
        if wrong:
            raise ValueError(
                f"expected a clip batch {expected}, got {wrong} (shape {tuple(x.shape)})"
            )
        check_input_dtype(x, self._dtype(), what="clips")

    def _dtype(self) -> torch.dtype:
        param = next(self.parameters(), None)
        return param.dtype if param is not None else torch.get_default_dtype()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, T, C, H, W)`` -> feature maps ``(N, T', F, h, w)`` (``T' < T`` if pooled).

        An empty batch (``N = 0``) gives empty features (``T'`` then reads as ``T``)."""
        self._check_input(x)
        n = x.shape[0]
        feats = self.forward_frames(x.flatten(0, 1))
        if torch.jit.is_tracing() or n:  # traced sizes cannot be tested (a warning)
            return feats.view(n, feats.shape[0] // n, *feats.shape[1:])
        # an empty batch has no frames to count T' from
        return feats.reshape(0, self.num_segments, *feats.shape[1:])

    def forward_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames folded into the batch ``(M, C, H, W)`` -> the backbone's feature maps
        ``(M', F, h, w)``: the clips' frames in order (``M = N*T``; ``M' < M`` if pooled in
        time), or online one frame per stream (``M = N``)."""
        if self.channels_last:
            frames = frames.contiguous(memory_format=torch.channels_last)
        return self.backbone.forward_features(frames)

    def forward_frame_head(self, feats: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """Per-frame feature maps ``(M, F, h, w)`` -> per-frame logits ``(M, K)`` (or pooled
        features): average pool, dropout, classifier. The one head: :meth:`forward_head`
        averages it over segments, the online model calls it on every frame."""
        pooled = feats.mean(dim=(2, 3))
        return pooled if pre_logits else self.fc(self.dropout(pooled))

    def _segment_logits(self, feats: torch.Tensor, pre_logits: bool) -> torch.Tensor:
        n, t = feats.shape[:2]
        logits = self.forward_frame_head(feats.flatten(0, 1), pre_logits=pre_logits)
        # unflatten, not view(n, t, -1): -1 is ambiguous for an empty batch
        return logits.unflatten(0, (n, t))

    def forward_head(self, feats: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """Feature maps ``(N, T', F, h, w)`` -> logits ``(N, K)`` (or pooled features)."""
        return self._segment_logits(feats, pre_logits).mean(dim=1)

    def forward_segments(self, x: torch.Tensor) -> torch.Tensor:
        """Per-segment logits ``(N, T', num_classes)`` before the consensus average."""
        return self._segment_logits(self.forward_features(x), pre_logits=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and x.shape[0] == 0:
            # an empty batch has empty logits; not every module (non-local) takes zero frames
            self._check_input(x)
            width = self.num_classes or self.num_features
            return torch.zeros(0, width, dtype=self._dtype(), device=x.device)
        return self.forward_head(self.forward_features(x))

    def extra_repr(self) -> str:
        text = (
            f"num_segments={self.num_segments}, num_classes={self.num_classes}, "
            f"partial_bn={self.partial_bn}"
        )
        if (self.modality, self.new_length) != ("rgb", 1):
            text += f", modality={self.modality}, new_length={self.new_length}"
        return text
