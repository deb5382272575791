"""TensorRT target profiles (TargetProfile, one TOML per device) and device detection
(see ../shared/DESIGN.md, "TensorRT engines")."""
