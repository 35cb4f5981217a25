"""Metric families for spatial disorder: arrays in, small results out (no I/O, no plotting)."""

from .retrieval import retrieval_ranks, retrieval_scores, scores_from_ranks

__all__ = ["retrieval_ranks", "retrieval_scores", "scores_from_ranks"]
