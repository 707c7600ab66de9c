"""Online (streaming) recognition."""

from timeshift.online.online_model import (
    OnlineModule,
    OnlineRecognizer,
    OnlineShift,
    StreamedClips,
    online_step,
)

__all__ = ["OnlineModule", "OnlineRecognizer", "OnlineShift", "StreamedClips", "online_step"]
