"""Prefect flows: ``boundary_inference_flow`` (one video), the rejection monitor, backfill."""
