"""Online (streaming) recognition."""

from timeshift.online.online_model import (
    FrameModel,
    OnlineModule,
    OnlineRecognizer,
    StreamedClips,
    online_step,
)
from timeshift.ops.shift import OnlineShift  # the shift's streaming form, defined with it

__all__ = [
    "FrameModel",
    "OnlineModule",
    "OnlineRecognizer",
    "OnlineShift",
    "StreamedClips",
    "online_step",
]
