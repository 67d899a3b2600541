"""Tracking URIs as shown to people: without the credentials a URI may carry. Light on purpose
(no MLflow import), so the command line can use it."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def safe_uri(uri: str) -> str:
    """`uri` without the user name and password a tracking URI may carry (`https://user:pw@host`),
    for anything shown or stored: run URLs, `mlflow_run.json`, messages."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
