"""Small shared helpers: atomic file writes, safetensors and YAML I/O, dataclass configs."""
