"""Artifacts: the directory ``hwcc compile`` writes (``package``), loading and running it
(``runtime``; no ONNX importer needed), comparing it with onnxruntime (``compare``) and
bundling it for a device without Python (``deploy``)."""
