"""Intake: packet buffers and the pipeline that turns packets into aggregates."""
