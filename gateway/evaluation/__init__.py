"""Evaluation: per-task scores against a reference (metrics.py), computed when a result
is recorded (scoring.py), and per-model aggregates of a job's results (aggregate.py,
reports.py). Imports jobfile and store; nothing below the gateway imports it."""
