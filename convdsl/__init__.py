"""convdsl: a small language and optimising LLVM compiler for convolutional networks."""

__version__ = "0.1.0"
