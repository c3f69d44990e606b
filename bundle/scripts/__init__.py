"""Python components of the Med-SORA MONAI bundle; the configs in configs/ wire them together."""
