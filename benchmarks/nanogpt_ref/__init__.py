"""nanoGPT reference (MIT, Andrej Karpathy; see LICENSE): the model and the training loop, for
benchmarks/nanogpt_compare.py."""
