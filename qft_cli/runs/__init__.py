"""Run directories, atomic writers, file hashing and provenance, verification."""
