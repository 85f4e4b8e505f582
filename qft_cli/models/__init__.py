"""Model names and aliases, loading (hub, local, GGUF, tiny), the architecture layout, DNABERT-2."""
