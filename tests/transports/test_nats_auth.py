"""Encrypted and authenticated connections to real nats-servers: TLS with a throwaway CA
the test makes (the server verified by ``tls_ca``, a certificate for another name taken
through ``tls_hostname``, mutual TLS with ``tls_cert``/``tls_key``), an nkey seed file,
and a creds file under an operator (decentralised JWT auth). Each way in is shown to
work, an event appended and read back, and to be refused with a clear TransportError
in bounded time when the certificate or key is wrong.

Certificates come from the ``openssl`` command (``cryptography`` is not installed);
nkeys and JWTs from the ``nkeys`` package that nats-py uses."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import nkeys  # type: ignore[import-untyped]
import orjson
import pytest

from devservers.nats import NatsServer
from tidings.errors import ConfigError, TransportError
from tidings.transports.nats import NatsTransport

pytestmark = pytest.mark.integration

BOUND = 4.0  # seconds a start() refused by the server may take (connect_timeout=1s)
REFUSED = "connect_timeout=1s"
ELSEWHERE = "nats.tidings.test"  # the only name on the "elsewhere" server certificate


def add(url: str, option: str) -> str:
    """``url`` with one more query option."""
    return url + ("&" if "?" in url else "?") + option


@asynccontextmanager
async def started(url: str) -> AsyncIterator[NatsTransport]:
    transport = NatsTransport(url)
    await asyncio.wait_for(transport.start(), BOUND)
    try:
        yield transport
    finally:
        await transport.close()


@pytest.fixture
def servers(nats_binary: str) -> Iterator[Callable[[str], NatsServer]]:
    """Start JetStream nats-servers with the test's ``conf`` lines; each is stopped by
    its PID after the test."""
    running: list[NatsServer] = []

    def start(conf: str) -> NatsServer:
        server = NatsServer(nats_binary, conf=conf)
        running.append(server)
        server.start()
        return server

    yield start
    for server in running:
        server.stop()


async def round_trip(url: str) -> None:
    """Connect by ``url``, append an event to a new topic and read it back."""
    async with started(add(url, "partitions=1")) as transport:
        await transport.create_topic("t")
        value = orjson.dumps({"specversion": "1.0", "id": "e1", "type": "t.made", "source": "t"})
        assert await transport.append("t", [("k", value)]) == [(0, 0)]
        assert [r.value for r in await transport.read("t", 0, 0, 10)] == [value]


async def refusal(url: str) -> str:
    """The message of the TransportError that start() raises for ``url``, checked to
    come within the bound and to leave no connection behind."""
    transport = NatsTransport(add(url, REFUSED))
    began = time.monotonic()
    with pytest.raises(TransportError) as info:
        await asyncio.wait_for(transport.start(), BOUND)
    assert time.monotonic() - began < BOUND
    assert transport.client.nc is None
    return str(info.value)


# -- a throwaway certificate authority -----------------------------------------------------


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=10)


NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def make_ca(folder: Path, name: str) -> Issued:
    ca = Issued(folder / f"{name}.pem", folder / f"{name}.key")
    openssl(
        *("req", "-x509", *NEW_KEY, "-keyout", ca.key, "-out", ca.cert, "-days", "1"),
        *("-subj", f"/CN=tidings test {name}"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
    )
    return ca


def issue(ca: Issued, name: str, names: str, usage: str) -> Issued:
    """A certificate signed by ``ca`` for the subjectAltName ``names`` and the extended
    key usage ``usage`` (serverAuth or clientAuth)."""
    folder = ca.cert.parent
    leaf = Issued(folder / f"{name}.pem", folder / f"{name}.key")
    extensions = folder / f"{name}.ext"
    extensions.write_text(
        f"subjectAltName={names}\nextendedKeyUsage={usage}\n"
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    request = folder / f"{name}.csr"
    openssl("req", *NEW_KEY, "-keyout", leaf.key, "-out", request, "-subj", f"/CN={name}")
    serial = "0x" + os.urandom(8).hex()
    openssl(
        *("x509", "-req", "-in", request, "-CA", ca.cert, "-CAkey", ca.key),
        *("-set_serial", serial, "-days", "1", "-extfile", extensions, "-out", leaf.cert),
    )
    return leaf


@dataclass(frozen=True)
class Pki:
    ca: Issued
    server: Issued  # for 127.0.0.1 and localhost
    elsewhere: Issued  # for ELSEWHERE only
    client: Issued
    stranger_ca: Issued  # a CA the servers do not trust
    stranger: Issued  # a client certificate from it


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, stranger_ca = make_ca(folder, "ca"), make_ca(folder, "stranger-ca")
    return Pki(
        ca=ca,
        server=issue(ca, "server", "IP:127.0.0.1,DNS:localhost", "serverAuth"),
        elsewhere=issue(ca, "elsewhere", f"DNS:{ELSEWHERE}", "serverAuth"),
        client=issue(ca, "client", "DNS:tidings-client", "clientAuth"),
        stranger_ca=stranger_ca,
        stranger=issue(stranger_ca, "stranger", "DNS:tidings-client", "clientAuth"),
    )


def tls(server: Issued, ca: Issued | None = None) -> str:
    """A nats-server ``tls`` block; with ``ca``, clients must show a certificate it signed."""
    verify = f', ca_file: "{ca.cert}", verify: true' if ca else ""
    return f'tls {{ cert_file: "{server.cert}", key_file: "{server.key}"{verify}, timeout: 2 }}\n'


# -- TLS ----------------------------------------------------------------------------------


async def test_a_server_certificate_signed_by_the_urls_tls_ca_is_trusted(
    servers: Callable[[str], NatsServer], pki: Pki
) -> None:
    server = servers(tls(pki.server))
    await round_trip(f"nats://{server.address}?tls_ca={pki.ca.cert}")


@pytest.mark.parametrize("options", ["", "tls=true", "tls_ca={stranger}"])
async def test_a_server_certificate_the_client_cannot_verify_is_refused_within_the_bound(
    servers: Callable[[str], NatsServer], pki: Pki, options: str
) -> None:
    """By the system's CAs (no tls_ca; the server asks for TLS, or the URL does) or by
    a CA that did not sign it."""
    server = servers(tls(pki.server))
    url = f"nats://{server.address}"
    message = await refusal(
        add(url, options.format(stranger=pki.stranger_ca.cert)) if options else url
    )
    assert server.address in message
    assert "certificate verify failed" in message


async def test_tls_hostname_verifies_a_server_reached_by_an_address_its_certificate_lacks(
    servers: Callable[[str], NatsServer], pki: Pki
) -> None:
    server = servers(tls(pki.elsewhere))
    url = f"nats://{server.address}?tls_ca={pki.ca.cert}"
    assert "IP address mismatch" in await refusal(url)
    await round_trip(f"{url}&tls_hostname={ELSEWHERE}")
    assert "Hostname mismatch" in await refusal(f"{url}&tls_hostname=other.tidings.test")


async def test_mutual_tls_lets_in_a_client_certificate_the_server_trusts(
    servers: Callable[[str], NatsServer], pki: Pki
) -> None:
    server = servers(tls(pki.server, ca=pki.ca))
    client = pki.client
    await round_trip(
        f"nats://{server.address}?tls_ca={pki.ca.cert}&tls_cert={client.cert}&tls_key={client.key}"
    )


@pytest.mark.parametrize("client", ["none", "stranger"])
async def test_mutual_tls_refuses_a_missing_or_untrusted_client_certificate_within_the_bound(
    servers: Callable[[str], NatsServer], pki: Pki, client: str
) -> None:
    server = servers(tls(pki.server, ca=pki.ca))
    url = f"nats://{server.address}?tls_ca={pki.ca.cert}"
    if client == "stranger":
        url += f"&tls_cert={pki.stranger.cert}&tls_key={pki.stranger.key}"
    assert server.address in await refusal(url)


@pytest.mark.parametrize("case", ["untrusted server", "another name", "no client certificate"])
async def test_a_tls_refusal_says_it_is_tls_and_which_options_to_check(
    servers: Callable[[str], NatsServer], pki: Pki, case: str
) -> None:
    if case == "untrusted server":
        server, url = servers(tls(pki.server)), "?tls=true"  # the system's CAs
    elif case == "another name":
        server, url = servers(tls(pki.elsewhere)), f"?tls_ca={pki.ca.cert}"
    else:
        server, url = servers(tls(pki.server, ca=pki.ca)), f"?tls_ca={pki.ca.cert}"
    message = await refusal(f"nats://{server.address}{url}")
    assert "the TLS handshake failed" in message
    assert "check the URL's tls_ca" in message
    assert "is nats-server running" not in message


# -- nkeys --------------------------------------------------------------------------------


def new_seed(prefix: int = nkeys.PREFIX_BYTE_USER) -> tuple[str, str]:
    """A fresh nkey: (seed, public key)."""
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    return seed.decode(), nkeys.from_seed(bytearray(seed)).public_key.decode()


def nkey_server(servers: Callable[[str], NatsServer], public_key: str) -> NatsServer:
    return servers(f'authorization {{ users = [ {{ nkey: "{public_key}" }} ] }}\n')


async def test_an_nkey_seed_file_the_server_knows_is_let_in(
    servers: Callable[[str], NatsServer], tmp_path: Path
) -> None:
    seed, public_key = new_seed()
    (tmp_path / "app.nk").write_text(seed + "\n")
    server = nkey_server(servers, public_key)
    await round_trip(f"nats://{server.address}?nkey={tmp_path / 'app.nk'}")


@pytest.mark.parametrize("key", ["another user", "an account", "none"])
async def test_an_nkey_the_server_does_not_know_is_refused_clearly(
    servers: Callable[[str], NatsServer], tmp_path: Path, key: str
) -> None:
    server = nkey_server(servers, new_seed()[1])
    seed = new_seed(nkeys.PREFIX_BYTE_ACCOUNT if key == "an account" else nkeys.PREFIX_BYTE_USER)
    (tmp_path / "app.nk").write_text(seed[0])
    url = f"nats://{server.address}"
    if key != "none":
        url = add(url, f"nkey={tmp_path / 'app.nk'}")
    message = await refusal(url)
    assert f"nats://{server.address}" in message
    assert "the server refused the credentials" in message
    assert seed[0] not in message


async def test_a_file_that_holds_no_nkey_seed_is_a_config_error_naming_it(
    servers: Callable[[str], NatsServer], tmp_path: Path
) -> None:
    server = nkey_server(servers, new_seed()[1])
    path = tmp_path / "app.nk"
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    transport = NatsTransport(f"nats://{server.address}?nkey={path}&{REFUSED}")
    with pytest.raises(ConfigError) as info:
        await asyncio.wait_for(transport.start(), BOUND)
    assert f"option nkey='{path}'" in str(info.value)
    assert "holds no nkey seed" in str(info.value)
    assert transport.client.nc is None


# -- creds: an operator, its accounts, their users (decentralised JWT auth) ---------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(signer_seed: str, subject: str, name: str, claims: Mapping[str, object]) -> str:
    """A NATS JWT (v2) for ``subject``, signed with ``signer_seed``."""
    signer = nkeys.from_seed(bytearray(signer_seed.encode()))
    body: dict[str, object] = {
        "jti": "",
        "iat": int(time.time()),
        "iss": signer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": {**claims, "version": 2},
    }
    digest = hashlib.sha256(json.dumps(body, separators=(",", ":")).encode()).digest()
    body["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    header = _b64(b'{"typ":"JWT","alg":"ed25519-nkey"}') + "." + _b64(json.dumps(body).encode())
    return f"{header}.{_b64(signer.sign(header.encode()))}"


UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "conn": -1}
JETSTREAM = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


@dataclass(frozen=True)
class Operator:
    conf: str  # nats-server lines: the operator, the system account, the app account
    account_seed: str  # the app account's, to sign users with


@pytest.fixture(scope="module")
def operator() -> Operator:
    operator_seed, operator_key = new_seed(nkeys.PREFIX_BYTE_OPERATOR)
    _, system_key = new_seed(nkeys.PREFIX_BYTE_ACCOUNT)
    account_seed, account_key = new_seed(nkeys.PREFIX_BYTE_ACCOUNT)
    limits = {"type": "account", "limits": {**UNLIMITED, **JETSTREAM, "wildcards": True}}
    accounts = {
        system_key: jwt(operator_seed, system_key, "SYS", {"type": "account"}),
        account_key: jwt(operator_seed, account_key, "app", limits),
    }
    preload = ", ".join(f'{key}: "{token}"' for key, token in accounts.items())
    return Operator(
        conf=f'operator: "{jwt(operator_seed, operator_key, "op", {"type": "operator"})}"\n'
        f"system_account: {system_key}\nresolver: MEMORY\nresolver_preload: {{ {preload} }}\n",
        account_seed=account_seed,
    )


def write_creds(path: Path, account_seed: str, user_seed: str | None = None) -> Path:
    """A creds file for a new user of the account; with ``user_seed``, the file holds
    that seed instead of the user's own."""
    seed, public_key = new_seed()
    claims = {"type": "user", "pub": {}, "sub": {}, **UNLIMITED}
    path.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt(account_seed, public_key, 'app-user', claims)}\n"
        "------END NATS USER JWT------\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed or seed}\n"
        "------END USER NKEY SEED------\n"
    )
    return path


async def test_a_creds_file_of_a_user_under_the_servers_operator_is_let_in(
    servers: Callable[[str], NatsServer], operator: Operator, tmp_path: Path
) -> None:
    server = servers(operator.conf)
    creds = write_creds(tmp_path / "app.creds", operator.account_seed)
    await round_trip(f"nats://{server.address}?creds={creds}")


@pytest.mark.parametrize("wrong", ["an unknown account", "another user's seed"])
async def test_creds_the_server_cannot_trust_are_refused_clearly(
    servers: Callable[[str], NatsServer], operator: Operator, tmp_path: Path, wrong: str
) -> None:
    server = servers(operator.conf)
    if wrong == "an unknown account":
        creds = write_creds(tmp_path / "app.creds", new_seed(nkeys.PREFIX_BYTE_ACCOUNT)[0])
    else:
        creds = write_creds(tmp_path / "app.creds", operator.account_seed, new_seed()[0])
    message = await refusal(f"nats://{server.address}?creds={creds}")
    assert f"nats://{server.address}" in message
    assert "the server refused the credentials" in message
