"""Video object detection (TSM Appendix A): detectors on the temporal backbones, online with
the per-layer caches, their data, metrics and training."""
