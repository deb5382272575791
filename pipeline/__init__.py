"""edgeresnet: train a ResNet, export it, quantize it, and deploy it to TensorRT.

Importing ``pipeline`` loads no optional dependency (TensorRT, pycuda, NNCF); each is
imported where it is used, through :func:`pipeline.optional.import_optional`.
"""
__version__ = "0.1.0"
