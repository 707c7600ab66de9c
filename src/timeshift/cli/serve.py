"""``timeshift serve``: a local web page for live camera and uploaded-video recognition."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

from timeshift.cli.common import Parents, calibration_arg

__all__ = ["add_parser", "run_serve"]

_logger = logging.getLogger(__name__)


def add_parser(sub, parents: Parents) -> None:
    p = sub.add_parser(
        "serve",
        help="a web page (and JSON API) recognising the camera live and uploaded videos",
        description="Serve CHECKPOINT on http://HOST:PORT/: the page streams the camera over a "
        "WebSocket (online models keep their shift caches per connection, offline models see "
        "a sliding window) and predicts uploaded videos (top-k and their timeline). The API: "
        "GET /api/model, POST /api/predict (form field 'video'), WS /api/stream (JPEG frames "
        "in, JSON out); see docs/serve.md. Needs: pip install 'timeshift[web]'.",
        parents=[parents.online_runtime],
    )
    p.add_argument("checkpoint", help="checkpoint, or NAME.TAG of published weights")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (127.0.0.1: this machine only; another address lets other "
        "machines in, with a warning)",
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--max-upload-mb", type=float, default=200.0, help="upload limit (200 MB)")
    p.add_argument(
        "--max-frame-pixels", type=int, default=1920 * 1080, help="camera frame size limit"
    )
    p.add_argument("--max-connections", type=int, default=4, help="live connections at once (4)")
    p.add_argument(
        "--fps",
        type=float,
        help="camera frames sent per second (default: what the model's step allows, at most 15)",
    )
    p.add_argument("--window", type=float, default=2.0, help="offline models' window (2 s)")
    p.add_argument("--stride", type=float, default=1.0, help="uploads' timeline stride (1 s)")
    p.set_defaults(func=run_serve)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def _allowed_hosts(host: str) -> tuple[str, ...] | None:
    """The Host names the server answers: this machine's names and ``--host`` (a DNS name
    rebound to 127.0.0.1 by a web page is refused); any name when listening on every
    interface, whose names the server cannot know."""
    if host in ("0.0.0.0", "::", ""):
        return None
    return tuple(dict.fromkeys((*LOOPBACK_NAMES, host)))


def run_serve(args: argparse.Namespace) -> int:
    from timeshift.serve import ServeOptions, create_app

    try:
        import uvicorn
    except ImportError:
        raise ImportError(
            "timeshift serve needs the web extra: pip install 'timeshift[web]'"
        ) from None
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    options = ServeOptions(
        backend=args.backend,
        memory_format=args.format,
        precision=args.precision,
        calibration=calibration_arg(args),
        device=args.device,
        top_k=args.top_k,
        max_upload_mb=args.max_upload_mb,
        max_frame_pixels=args.max_frame_pixels,
        max_connections=args.max_connections,
        fps=args.fps,
        window=args.window,
        stride=args.stride,
        allowed_hosts=_allowed_hosts(args.host),
    )
    if not _is_loopback(args.host):
        print(
            f"timeshift: warning: serving on {args.host}: other machines can reach the page, "
            "its camera stream and its upload form (there is no authentication); use "
            "--host 127.0.0.1 to keep it on this machine",
            file=sys.stderr,
        )
    app = create_app(args.checkpoint, options)
    print(f"timeshift serve: http://{args.host}:{args.port}/  (Ctrl+C stops)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", ws_max_size=16 << 20)
    return 0
