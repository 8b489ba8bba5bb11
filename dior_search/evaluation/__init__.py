"""Evaluation: retrieval metrics, `bench` against the baselines, and the offline demo."""
