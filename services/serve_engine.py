"""The in-core ray.serve.llm server, under the name services/lora.py imports it by; it is
defined with the other engine start-up tricks in pipelines/fast_start.py."""

from __future__ import annotations

from pipelines.fast_start import InCoreLLMServer

__all__ = ["InCoreLLMServer"]
