"""A small client for what `weftctl install`/`uninstall`/`precheck` ask of an API server:
discovery, server-side apply, delete, get. Built on the official client's ApiClient
(through meshcore.kubehttp, as the controller uses it), so kubeconfig handling
(contexts, client certificates, exec plugins, tokens) is the client's.

Every error names the object and carries the API server's own message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes.config.config_exception import ConfigException

from meshcore import kubehttp
from weftctl.render import ObjectRef

FIELD_MANAGER = "weftctl"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
TIMEOUT = (10, 60)  # connect, read (seconds)


class KubeError(Exception):
    """A request the API server refused, or could not be reached; says which object and why."""

    def __init__(self, message: str, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason  # the Status object's reason: NotFound, Conflict, Invalid...


@dataclass(frozen=True)
class ApiResource:
    prefix: str  # /api/v1, /apis/apps/v1
    plural: str
    namespaced: bool


def _prefix(api_version: str) -> str:
    return f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"


def _message(body: bytes) -> tuple[str, str]:
    """(message, reason) of a Kubernetes Status body, else the body's start."""
    text = body.decode("utf-8", "replace")
    try:
        status = json.loads(text)
    except ValueError:
        return text[:300].strip(), ""
    if isinstance(status, dict) and status.get("kind") == "Status":
        return str(status.get("message", "")), str(status.get("reason", ""))
    return text[:300].strip(), ""


class KubeApi:
    def __init__(self, api: kclient.ApiClient) -> None:
        self.api = api
        self._discovery: dict[str, dict[str, ApiResource] | None] = {}

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path | None, context: str | None) -> KubeApi:
        """As kubectl: --kubeconfig, else $KUBECONFIG, else ~/.kube/config."""
        configuration = kclient.Configuration()
        try:
            kconfig.load_kube_config(
                config_file=str(kubeconfig) if kubeconfig is not None else None,
                context=context,
                client_configuration=configuration,
            )
        except (ConfigException, OSError) as err:
            where = kubeconfig or "$KUBECONFIG or ~/.kube/config"
            raise KubeError(f"kubeconfig {where}: {err}") from None
        return cls(kclient.ApiClient(configuration))

    def close(self) -> None:
        self.api.close()

    @property
    def host(self) -> str:
        return str(self.api.configuration.host)

    def request(
        self,
        method: str,
        path: str,
        what: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """(status, parsed JSON body) of a request; 404 is returned, not raised (callers
        decide whether absence is an error); any other 4xx/5xx raises naming `what`."""
        try:
            code, data = kubehttp.exchange(
                self.api,
                method,
                path,
                body=body,
                content_type=content_type,
                query=query,
                timeout=TIMEOUT,
            )
        except Exception as err:  # urllib3's errors: connection refused, TLS, timeouts
            raise KubeError(f"{what}: cannot reach the API server at {self.host}: {err}") from None
        if code == 404:
            message, reason = _message(data)
            return 404, {"message": message, "reason": reason}
        if code >= 400:
            message, reason = _message(data)
            raise KubeError(
                f"{what}: the API server refused it (HTTP {code}"
                f"{', ' + reason if reason else ''}): {message}",
                code,
                reason,
            )
        try:
            return code, json.loads(data) if data else {}
        except ValueError:
            raise KubeError(f"{what}: the API server's answer is not JSON") from None

    # --- discovery ---------------------------------------------------------------------

    def resources(self, api_version: str) -> dict[str, ApiResource] | None:
        """kind -> resource of an API group version; None when the server does not serve it."""
        if api_version not in self._discovery:
            prefix = _prefix(api_version)
            status, body = self.request("GET", prefix, f"discovery of {api_version}")
            found: dict[str, ApiResource] | None = None
            if status != 404:
                found = {}
                for r in body.get("resources") or ():
                    if "/" not in r.get("name", "/"):  # subresources: pods/status...
                        found[r["kind"]] = ApiResource(prefix, r["name"], bool(r["namespaced"]))
            self._discovery[api_version] = found
        return self._discovery[api_version]

    def forget_discovery(self) -> None:
        """After CRDs are created, their groups become served."""
        self._discovery.clear()

    def resource(self, ref: ObjectRef) -> ApiResource | None:
        served = self.resources(ref.api_version)
        return None if served is None else served.get(ref.kind)

    def collection_path(self, ref: ObjectRef, res: ApiResource) -> str:
        if res.namespaced:
            if not ref.namespace:
                raise KubeError(f"{ref}: a namespaced kind without metadata.namespace")
            return f"{res.prefix}/namespaces/{ref.namespace}/{res.plural}"
        return f"{res.prefix}/{res.plural}"

    def _path(self, ref: ObjectRef) -> str:
        res = self.resource(ref)
        if res is None:
            raise KubeError(
                f"{ref}: the API server does not serve {ref.kind} in {ref.api_version}",
                404,
                "NotServed",
            )
        return f"{self.collection_path(ref, res)}/{ref.name}"

    # --- objects -----------------------------------------------------------------------

    def apply(self, ref: ObjectRef, obj: dict[str, Any], dry_run: bool) -> str:
        """Server-side apply (field manager weftctl, conflicts forced: weftctl owns what it
        installs); "created" or "configured"."""
        # Strict: an unknown or duplicate field is an error, as with kubectl's default.
        query = [("fieldManager", FIELD_MANAGER), ("force", "true"), ("fieldValidation", "Strict")]
        if dry_run:
            query.append(("dryRun", "All"))
        status, body = self.request(
            "PATCH", self._path(ref), f"apply {ref}", query, obj, APPLY_CONTENT_TYPE
        )
        if status == 404:
            raise KubeError(f"apply {ref}: {body['message']}", 404, body["reason"])
        return "created" if status == 201 else "configured"

    def get(self, ref: ObjectRef) -> dict[str, Any] | None:
        """The object, or None when it is not there (or its kind is not served at all)."""
        if self.resource(ref) is None:
            return None
        status, body = self.request("GET", self._path(ref), f"get {ref}")
        return None if status == 404 else body

    def delete(self, ref: ObjectRef) -> bool:
        """True when deleted (or deletion started), False when it was not there."""
        if self.resource(ref) is None:
            return False  # its CRD is gone: so is the object
        status, _ = self.request(
            "DELETE",
            self._path(ref),
            f"delete {ref}",
            body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
        )
        return status != 404

    def version(self) -> dict[str, Any]:
        _, body = self.request("GET", "/version", "server version")
        return body if isinstance(body, dict) else {}
