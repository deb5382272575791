"""The workstation side: training, export, calibration and quantization.

Needs the training stack (torch, torchvision, NNCF, ONNX Runtime). It may use the device
side (evaluation, bundles, benchmarks run here too, on the ``cpu`` target), never the
other way round.
"""
