"""scotd-harness: Symbolic Chain-of-Thought Distillation as a tool.

Importing the package is cheap (no torch, no transformers): the heavy modules are imported by the commands
that need them.
"""

__version__ = "0.1.0"
