"""``timeshift serve``: a local web page (and JSON API) for live camera and uploaded-video
recognition; see :mod:`timeshift.serve.app`."""

from timeshift.serve.app import ServedModel, ServeOptions, create_app

__all__ = ["ServeOptions", "ServedModel", "create_app"]
