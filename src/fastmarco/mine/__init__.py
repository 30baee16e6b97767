"""Hard-negative mining: candidates from retrieval systems, scored, filtered by a margin, sampled."""
