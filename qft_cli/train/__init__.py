"""Normalisation (parametrizations), qft's own transformer, training, fine-tuning, export, statistics over seeds."""
