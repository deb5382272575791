"""The device side: what runs on a Jetson (or any deployment machine).

Engines, the bundle, evaluation of deployed models, the camera loop, benchmarks and
reports. A Jetson has JetPack's Python (3.10 on JetPack 6, 3.8 on JetPack 5), NumPy 1.x,
the system's TensorRT and OpenCV, and nothing heavy besides: so nothing here imports
torch, torchvision, NNCF, ONNX Runtime, PIL or the workstation side, directly or through
another module. The contract in ``.importlinter`` (run by tests/test_layering.py) keeps
it so; backends such as ONNX Runtime are reached only through the runner registry, by
the file's type, and only where that runtime is installed.
"""
