"""llmflow's shared kernel: configuration, artifact store, step runner, registry and event names."""

__version__ = "0.1.0"
