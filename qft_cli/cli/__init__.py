"""Thin Typer layer: parse, validate, call one library function, print a summary."""
