"""Read-only views of the output topics for analysts: filters and feed formats."""
