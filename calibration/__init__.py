"""INT8 calibration: calibration-set selection, manifest, NNCF feeding, Q/DQ rules for
TensorRT and the implicit TensorRT calibrator (see ../shared/DESIGN.md, "INT8")."""
