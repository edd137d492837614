"""Semantic Soft Bootstrapping: the algorithm as plain, Ray-free Python.

Nothing in this package imports Ray, vLLM or Redis; `pipelines/`, `services/` and
`cluster/` compose these pieces with them.
"""

__version__ = "0.1.0"
