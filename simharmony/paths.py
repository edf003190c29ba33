"""Where the shipped weights and demo scene live (next to the package in a source checkout)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = REPO_ROOT / "weights"
DEMO_SCENE_DIR = WEIGHTS_DIR / "demo_street"
DEMO_ASSETS_DIR = WEIGHTS_DIR / "demo_assets"
PARAMETRIC_DIR = WEIGHTS_DIR / "parametric"  # the trained parametric curves + shading baseline
ENHANCER_DIR = WEIGHTS_DIR / "enhancer"  # default enhancer weights (config.yaml + model.safetensors)
