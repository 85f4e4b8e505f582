"""Shared ground: errors, progress, device choice, torch threads, torch.distributed."""
