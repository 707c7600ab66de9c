"""Online (streaming) recognition."""

from timeshift.online.recognizer import (
    OnlineModule,
    OnlineRecognizer,
    OnlineShift,
    StreamedClips,
    online_step,
)

__all__ = ["OnlineModule", "OnlineRecognizer", "OnlineShift", "StreamedClips", "online_step"]
