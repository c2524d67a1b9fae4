"""Scheduled batch scoring: job specs (YAML), local/Dataflow runs per date, flex-template
launches through the Dataflow API, and the scheduler wiring generated from the same spec.

Imports run one way: jobs -> pipeline -> transforms.
"""
