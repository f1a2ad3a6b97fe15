"""Integrations: run directories on object stores (fsspec), MLflow tracking, the HTML run report.

Each module imports its optional dependency (fsspec/s3fs, mlflow) only when used.
"""
