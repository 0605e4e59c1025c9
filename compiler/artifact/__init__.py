"""Artifacts: the directory ``hwcc compile`` writes (``package``), loading and running it
(``runtime``; no ONNX importer needed), comparing it with onnxruntime (``compare``) and
bundling it for a device without Python (``deploy``)."""

# registers the embedded target's artifact class with Artifact.load
from . import embedded as _embedded  # noqa: E402,F401
