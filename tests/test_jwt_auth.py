"""``jwt_auth``: real servers, real clients, tokens made with PyJWT."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from frame_builder import client_frame
from helpers import (
    LOOPBACK,
    LOOPBACK_ANY_PORT,
    ServerProcess,
    assert_clean_failure,
    connect,
    free_port,
    read_response_head,
    read_server_frame,
    read_until_eof,
    run_fws_server,
    run_server,
    upgrade_request,
    url,
    wait_for,
)

import fws
from fws import ConfigurationError, Request
from fws.filters.jwt_auth import JwtAuth, JwtSettings, find_token
from fws.frames import OP_CLOSE, OP_TEXT

SECRET = "a test secret of at least 32 bytes, for HS256"


def token(
    claims: dict[str, Any] | None = None, key: Any = SECRET, algorithm: str = "HS256"
) -> str:
    claims = {"sub": "alice", "exp": int(time.time()) + 60} if claims is None else claims
    return jwt.encode(claims, key, algorithm=algorithm)


def whoami(connection: fws.Connection, data: object) -> None:
    """A message filter: answers with what jwt_auth stored on the connection."""
    assert connection.claims is not None
    connection.send(f"{connection.user} {sorted(connection.claims)}")


def auth(**settings: Any) -> JwtAuth:
    settings.setdefault("secret", SECRET)
    return JwtAuth(JwtSettings(**settings))


def handshake(port: int, path: str = "/", headers: tuple[str, ...] = ()) -> tuple[int, bytes]:
    """A raw upgrade request: (status, body) for a refusal, (101, reply to "hi") otherwise."""
    sock = socket.create_connection((LOOPBACK, port), timeout=5)
    with sock:
        extra = "".join(f"{header}\r\n" for header in headers)
        sock.sendall(upgrade_request(port, path, extra))
        response = read_response_head(sock)
        head, _, body = response.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        if status != 101:
            return status, body + read_until_eof(sock)
        sock.sendall(client_frame(OP_TEXT, b"hi"))
        opcode, payload = read_server_frame(sock)
        assert opcode == OP_TEXT
        return status, payload


def public_pem(private_key: Any) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# -- token sources and their order -------------------------------------------------


def test_bearer_header_admits_and_claims_reach_message_filters():
    with run_server(connect=auth(), message=whoami) as server:
        client = connect(server, header=[f"Authorization: Bearer {token()}"])
        client.send("who am i?")
        assert client.recv() == "alice ['exp', 'sub']"


def test_query_parameter_admits():
    with run_server(connect=auth(), message=whoami) as server:
        client = connect(url(server, f"/?token={token()}"))
        client.send("who am i?")
        assert client.recv() == "alice ['exp', 'sub']"


def test_cookie_admits_only_when_a_cookie_name_is_set():
    with run_server(connect=auth(cookie="session"), message=whoami) as server:
        client = connect(server, cookie=f"theme=dark; session={token()}")
        client.send("who am i?")
        assert client.recv() == "alice ['exp', 'sub']"
    with run_server(connect=auth(), message=whoami) as server:
        assert handshake(server.address[1], headers=(f"Cookie: session={token()}",)) == (
            401,
            b"no token\n",
        )


def test_bearer_subprotocol_admits_for_browsers():
    offer = f"Sec-WebSocket-Protocol: chat, bearer.{token()}"
    with run_server(connect=auth(), message=whoami) as server:
        assert handshake(server.address[1], headers=(offer,)) == (101, b"alice ['exp', 'sub']")


def test_the_first_source_present_is_the_only_one_checked():
    good, bad = token(), token(key="another secret of at least 32 bytes!!")
    with run_server(connect=auth(), message=whoami) as server:
        port = server.address[1]
        # A valid header wins over a bad query token...
        assert handshake(port, f"/?token={bad}", (f"Authorization: Bearer {good}",))[0] == 101
        # ...and a bad header is not rescued by a valid query token.
        assert handshake(port, f"/?token={good}", (f"Authorization: Bearer {bad}",)) == (
            401,
            b"invalid signature\n",
        )
        # An Authorization header of another scheme is not a token source.
        assert handshake(port, f"/?token={good}", ("Authorization: Basic dTpw",))[0] == 101


def test_find_token_order_and_the_bearer_subprotocol_in_any_case():
    tokens = {"authorization": "Bearer H", "cookie": "c=C"}
    offers = ("x", "Bearer.P")  # the handshake fills request.subprotocols
    request = Request("/", "token=Q", headers=tokens, subprotocols=offers)
    assert find_token(request, "c") == "H"
    del tokens["authorization"]
    assert find_token(Request("/", "token=Q", headers=tokens, subprotocols=offers), "c") == "Q"
    assert find_token(Request("/", headers=tokens, subprotocols=offers), "c") == "C"
    assert find_token(Request("/", headers=tokens, subprotocols=offers)) == "P"
    assert find_token(Request("/")) is None


def test_a_token_too_far_in_the_future_for_a_float_is_admitted_without_a_timer():
    far = jwt.encode({"sub": "ada", "exp": 10**400}, SECRET, algorithm="HS256")
    with run_server(connect=auth(), message=whoami) as server:
        status, reply = handshake(server.address[1], "/", (f"Authorization: Bearer {far}",))
    assert (status, reply) == (101, b"ada ['exp', 'sub']")


# -- refusals: 401 and a one-line reason -------------------------------------------------

NOW = int(time.time())
ISS = "https://id.example"


@pytest.mark.parametrize(
    ("credentials", "reason"),
    [
        (None, "no token"),
        ("not-a-token", "malformed token"),
        ("a.b.c", "malformed token"),
        (token(key="wrong secret, also at least 32 bytes long"), "invalid signature"),
        (token({"sub": "a", "exp": NOW - 10}), "token expired"),
        (token({"sub": "a", "nbf": NOW + 3600}), "token not yet valid"),
        (token({"sub": "a", "aud": "billing", "iss": ISS}), "invalid audience"),
        (token({"sub": "a", "aud": "chat", "iss": "evil"}), "invalid issuer"),
        (token({"sub": "a", "aud": "chat"}), "invalid issuer"),  # iss missing
        (token({"sub": "a", "iss": ISS}), "invalid audience"),  # aud missing
        (token({"sub": "a"}, SECRET * 2, "HS512"), "token algorithm not allowed"),
        (jwt.encode({"sub": "a"}, None, algorithm="none"), "token algorithm not allowed"),
    ],
)
def test_bad_tokens_get_401_with_the_reason(credentials, reason):
    settings = {"audience": "chat", "issuer": ISS}
    with run_server(connect=auth(**settings), message=whoami) as server:
        path = "/" if credentials is None else f"/?token={credentials}"
        assert handshake(server.address[1], path) == (401, f"{reason}\n".encode())


def test_hmac_token_signed_with_the_public_key_is_refused():
    """The classic algorithm confusion: HS256 keyed with the server's public key."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = public_pem(private)

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(b'{"sub":"mallory"}')
    signature = hmac.new(pem, signing_input, hashlib.sha256).digest()
    forged = (signing_input + b"." + b64(signature)).decode()
    with run_server(connect=JwtAuth(JwtSettings(public_key=pem)), message=whoami) as server:
        assert handshake(server.address[1], f"/?token={forged}") == (
            401,
            b"token algorithm not allowed\n",
        )
    with pytest.raises(ConfigurationError, match="algorithm confusion"):
        JwtSettings(public_key=pem, algorithms=("RS256", "HS256"))
    with pytest.raises(ConfigurationError, match="cannot be verified with an HMAC secret"):
        JwtSettings(secret=SECRET, algorithms=("RS256",))


@pytest.mark.parametrize(
    ("make_key", "algorithm"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
        (ed25519.Ed25519PrivateKey.generate, "EdDSA"),
    ],
)
def test_public_key_algorithms(make_key, algorithm):
    private = make_key()
    settings = JwtSettings(public_key=public_pem(private))
    assert settings.algorithms == (algorithm,)
    with run_server(connect=JwtAuth(settings), message=whoami) as server:
        good = token({"sub": "bob"}, key=private, algorithm=algorithm)
        assert handshake(server.address[1], f"/?token={good}") == (101, b"bob ['sub']")
        other = token({"sub": "bob"}, key=make_key(), algorithm=algorithm)
        assert handshake(server.address[1], f"/?token={other}") == (401, b"invalid signature\n")


# -- expiry ----------------------------------------------------------------------------


def test_connection_closes_with_1008_when_the_token_expires():
    expiring = token({"sub": "alice", "exp": int(time.time()) + 2})
    with run_server(connect=auth(), message=whoami) as server:
        client = connect(server, header=[f"Authorization: Bearer {expiring}"], timeout=6)
        client.send("still here?")
        assert client.recv() == "alice ['exp', 'sub']"
        started = time.monotonic()
        opcode, payload = client.recv_data(control_frame=True)
        assert (opcode, payload) == (OP_CLOSE, b"\x03\xf0token expired")  # 1008
        assert time.monotonic() - started < 3


# -- refusing to start -------------------------------------------------------------------


def test_jwt_auth_without_settings_refuses_to_start():
    with pytest.raises(ConfigurationError, match="--jwt-secret or --jwt-key-file"):
        with run_server(connect=JwtAuth):
            pass


def test_cli_without_a_secret_or_key_exits_2():
    result = run_fws_server(["-f", "jwt_auth", "-p", "0"])
    assert_clean_failure(result, 2, "--jwt-secret", "--jwt-key-file")
    assert result.stderr.count("Error:") == 1


def test_cli_refuses_unsafe_or_unusable_keys(tmp_path):
    pem = tmp_path / "public.pem"
    pem.write_bytes(public_pem(ec.generate_private_key(ec.SECP256R1())))
    args = ["-f", "jwt_auth", "-p", "0", "--jwt-key-file"]
    confused = run_fws_server([*args, str(pem), "--jwt-algorithms", "ES256", "HS256"])
    assert_clean_failure(confused, 2, "HS256", "algorithm confusion")
    missing = tmp_path / "missing.pem"
    missing_key = run_fws_server([*args, str(missing)])
    assert_clean_failure(missing_key, 2, f"JWT key file not found: {missing}")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    garbage_key = run_fws_server([*args, str(garbage)])
    assert_clean_failure(garbage_key, 2, str(garbage), "not a PEM public key")
    both = run_fws_server([*args, str(pem), "--jwt-secret", SECRET])
    assert_clean_failure(both, 2, "not both")


# -- the command line, end to end ---------------------------------------------------------


def test_cli_with_env_secret_and_no_token_in_the_log():
    expired = token({"sub": "alice", "exp": int(time.time()) - 10})
    forged = token(key="not the server's secret, 32 bytes or more")
    good = token()
    env = {**LOOPBACK_ANY_PORT, "FWS_JWT_SECRET": SECRET}
    with ServerProcess(["-f", "jwt_auth", "echo"], env=env) as server:
        assert handshake(server.port, f"/?token={expired}") == (401, b"token expired\n")
        assert handshake(server.port, "/", (f"Authorization: Bearer {forged}",))[0] == 401
        offer = f"Sec-WebSocket-Protocol: bearer.{forged}"
        assert handshake(server.port, "/", (offer,)) == (401, b"invalid signature\n")
        client = connect(server.url, header=[f"Authorization: Bearer {good}"])
        client.send("echoed")
        assert client.recv() == "echoed"
        client.close()
        wait_for(lambda: server.output.count("refused: 401") == 3, message=server.output)
        wait_for(lambda: " closed: " in server.output, message=server.output)
        assert server.stop() == 0
    assert "refused: 401 token expired" in server.output
    for secret in (expired, forged, good, SECRET):
        assert secret not in server.output
        # Not even the signature, the part that differs between tokens of one user.
        assert secret.rpartition(".")[2] not in server.output


def test_cli_config_file_keys_and_key_file(tmp_path):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "public.pem").write_bytes(public_pem(private))
    config = tmp_path / "fws.json"
    config.write_text(
        json.dumps(
            {
                "filters": ["jwt_auth", "echo"],
                "jwt_key_file": str(tmp_path / "public.pem"),
                "jwt-audience": "chat",
                "jwt_cookie": "session",
            }
        )
    )
    with ServerProcess(["-c", str(config)], env=LOOPBACK_ANY_PORT) as server:
        good = token({"sub": "bob", "aud": "chat"}, key=private, algorithm="RS256")
        client = connect(server.url, cookie=f"session={good}")
        client.send("configured")
        assert client.recv() == "configured"
        no_aud = token({"sub": "bob"}, key=private, algorithm="RS256")
        assert handshake(server.port, "/", (f"Cookie: session={no_aud}",)) == (
            401,
            b"invalid audience\n",
        )


def test_jwt_options_without_jwt_auth_warn():
    env = {**LOOPBACK_ANY_PORT, "FWS_JWT_SECRET": SECRET}
    with ServerProcess(["-f", "echo"], env=env) as server:
        wait_for(lambda: "have no effect without -f jwt_auth" in server.output)
        client = connect(server.url)
        client.send("open to all")
        assert client.recv() == "open to all"


def test_documented_script_example(tmp_path):
    guide = (Path(__file__).parent.parent / "docs" / "guide" / "auth.rst").read_text()
    section = guide[guide.index("JWT at the door\n===") :]
    block = section[section.index("From a script") :].partition("::\n\n")[2]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    port = free_port()
    script = tmp_path / "jwt_script.py"
    script.write_text("\n".join(lines).replace("port=9000", f"port={port}, host={LOOPBACK!r}"))
    env = {"FWS_JWT_SECRET": SECRET}
    command = [sys.executable, str(script)]
    with ServerProcess([], env=env, command=command).start(port=port):
        assert handshake(port) == (401, b"no token\n")
        assert handshake(port, f"/?token={token({'sub': 'ann', 'aud': 'chat'})}") == (
            101,
            b"ann said hi",
        )
