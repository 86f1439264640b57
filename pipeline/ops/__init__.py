"""Operator tools: topic descriptions, partition rescale, the generation control topic."""
