"""Data: sources, preprocessing, mixture and batching (the grain pipeline lands with the data issue)."""
