"""RequestAuthentication (JWT) at a namespace waypoint in the lab, as a user sees it: `weftctl
waypoint apply --enroll-namespace --wait`, Service `echo` (a `weft/http-echo` pod), a client pod
under its own service account, a RequestAuthentication with targetRefs to Service echo whose
one rule carries the issuer's keys inline (an EC key made in the test process, so nothing is
fetched) and puts the token's `sub` in `x-jwt-sub`, and an ALLOW policy that asks for a request
principal of that issuer. Tokens are signed here and sent from inside the client pod: a valid
one reaches the echo with `x-jwt-sub` and without the token; an expired one, or one signed by
another key, gets 401; none gets 403 from the policy."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import RUN_ID
from tests.e2e import waypoint_lab as wl
from tests.integration.lab.labtools import Lab

pytestmark = pytest.mark.e2e

NS = "jwte2e"
ISS = "https://issuer.weft.test"
AUD = "echo.jwte2e"
KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())


def jwks() -> str:
    """The issuer's JWKS (KEY's public half), as JSON text."""
    key: dict[str, object] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(KEY.public_key()))
    key.update(kid="k1", alg="ES256", use="sig")
    return json.dumps({"keys": [key]})


def token(key: ec.EllipticCurvePrivateKey = KEY, **claims: object) -> str:
    body: dict[str, object] = {
        "iss": ISS,
        "sub": "alice",
        "aud": AUD,
        "exp": int(time.time()) + 600,
    }
    body.update(claims)
    # as PEM text: this PyJWT's annotations take the key as a str
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return jwt.encode(body, pem, algorithm="ES256", headers={"kid": "k1"})


MANIFESTS = wl.manifests(
    wl.enrolled_namespace(NS),
    wl.service(NS, "echo", {"app": "echo"}),
    wl.echo_deployment(NS, "echo", node="node-2"),
    f"""
apiVersion: v1
kind: ServiceAccount
metadata: {{name: client, namespace: {NS}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NS}, labels: {{app: client}}}}
spec:
  nodeName: node-1
  serviceAccountName: client
  containers:
  - name: main
    command: ["sleep", "3600"]
""",
)


def policies() -> str:
    # the inline JWKS is JSON text; a JSON string is a YAML double-quoted scalar
    return f"""
apiVersion: security.weft.dev/v1
kind: RequestAuthentication
metadata: {{name: echo-jwt, namespace: {NS}}}
spec:
  targetRefs: [{{kind: Service, group: "", name: echo}}]
  jwtRules:
  - issuer: {ISS}
    audiences: [{AUD}]
    jwks: {json.dumps(jwks())}
    outputClaimToHeaders:
    - {{header: x-jwt-sub, claim: sub}}
---
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {{name: echo-require-jwt, namespace: {NS}}}
spec:
  targetRefs: [{{kind: Service, group: "", name: echo}}]
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["{ISS}/*"]}}}}]
"""


# Run in the client pod: one GET of /who on echo:80 for each token given ("" for none), each on
# its own connection; [status, body] of each, or ["error", exception name] with no answer.
GETS = textwrap.dedent("""
    import http.client, json, sys
    out = []
    for tok in json.loads(sys.argv[1]):
        headers = {"Authorization": "Bearer " + tok} if tok else {}
        try:
            conn = http.client.HTTPConnection("echo", 80, timeout=5)
            conn.request("GET", "/who", headers=headers)
            resp = conn.getresponse()
            out.append([resp.status, resp.read().decode("latin-1")])
            conn.close()
        except (OSError, http.client.HTTPException) as err:
            out.append(["error", type(err).__name__])
    print(json.dumps(out))
""")


def gets(lab: Lab, tokens: list[str]) -> list[tuple[int | str, str]]:
    """(status or "error", body or exception name) of a GET with each token, from the client."""
    out = lab.exec("client", NS, "python3", "-c", GETS, json.dumps(tokens), timeout=60).stdout
    return [(s, str(b)) for s, b in json.loads(out.strip().splitlines()[-1])]


def seen_headers(body: str) -> dict[str, str]:
    """The request headers the echo reports, by lower-case name."""
    headers = wl.echo_said(body).get("request", {}).get("headers", {})
    return {str(k).lower(): str(v) for k, v in headers.items()}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The lab with its waypoint, and both policies in force at it."""
    workdir = tmp_path_factory.mktemp("jwt")
    with wl.running_lab(f"weft-e2e-jwt-{RUN_ID}", MANIFESTS, workdir) as lab:
        applied = wl.apply_waypoint(lab, NS)
        assert f"waypoint {NS}/waypoint is programmed" in applied.stdout
        ((before, _),) = gets(lab, [""])
        assert before == 200, "without policies the echo answers a call with no token"
        wl.apply_yaml(lab, workdir / "policies.yaml", policies())
        # in force: no token is refused by the policy, and a valid token (which only the
        # RequestAuthentication turns into a request principal) is let through
        last = wl.poll_until(
            lambda: gets(lab, ["", token()]),
            lambda r: [s for s, _ in r] == [403, 200],
            30,
        )
        assert [s for s, _ in last] == [403, 200], last
        yield lab


def test_a_valid_token_reaches_the_echo_with_its_sub_and_without_the_token(lab: Lab) -> None:
    ((status, body),) = gets(lab, [token(sub="bob")])
    assert status == 200, body
    seen = seen_headers(body)
    assert seen.get("x-jwt-sub") == "bob", seen
    assert "authorization" not in seen, seen  # forwardOriginalToken defaults to false


def test_an_expired_token_or_another_keys_token_gets_401(lab: Lab) -> None:
    expired = token(exp=int(time.time()) - 3600)  # well past the 60 s leeway
    forged = token(OTHER_KEY)  # signed by another key under the JWKS's kid
    answers = gets(lab, [expired, forged])
    assert answers == [(401, "Jwt verification fails")] * 2, answers


def test_no_token_is_left_to_the_policy_which_denies_it(lab: Lab) -> None:
    answers = gets(lab, [""])
    assert answers == [(403, "RBAC: access denied")], answers
