"""Rollout side: vLLM engines in Ray actors, sampling, in-flight weight sync, the trajectory record."""
