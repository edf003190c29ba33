"""simharmony: an online, temporally stable harmonizer for frames rendered by neural simulators."""

__version__ = "0.1.0"
