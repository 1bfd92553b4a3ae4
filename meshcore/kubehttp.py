"""One request to a Kubernetes API server through the official client's ApiClient (its
kubeconfig, TLS and token handling), for the places that speak the REST API directly: the
controller's source, writer and TokenReview, the lab's API server, `weftctl install`.

Bodies are given as objects (the client serializes them; a JSON string would be sent as a
JSON string literal). Callers map statuses and transport errors to their own exceptions.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client as kclient

Timeout = tuple[float, float]  # connect, read (seconds)


def send(
    api: kclient.ApiClient,
    method: str,
    path: str,
    *,
    body: Any = None,
    content_type: str = "application/json",
    query: list[tuple[str, str]] | None = None,
    timeout: Timeout = (5, 30),
) -> Any:
    """The response, its body not read yet (a watch streams it): read it whole, or the
    connection goes back to the pool still busy."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    params = api.param_serialize(
        method,
        path,
        query_params=query or [],
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    return api.call_api(*params, _request_timeout=timeout)


def exchange(
    api: kclient.ApiClient,
    method: str,
    path: str,
    *,
    body: Any = None,
    content_type: str = "application/json",
    query: list[tuple[str, str]] | None = None,
    timeout: Timeout = (5, 30),
) -> tuple[int, bytes]:
    """(status, body) of one request, read whole."""
    response = send(
        api, method, path, body=body, content_type=content_type, query=query, timeout=timeout
    )
    return response.status, response.read()
