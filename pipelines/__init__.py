"""Ray jobs built from `ssb` components: curation (Ray Data + vLLM), distillation (Ray Train), evaluation."""
