"""The live classification loop: sources, threaded capture, INT8 beside its FP32 shadow."""
