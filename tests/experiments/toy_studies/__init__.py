"""A toy study package for the pipeline tests (stages that log each computation)."""
