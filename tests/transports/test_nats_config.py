"""nats:// URL parsing and validation (no server needed)."""

from __future__ import annotations

import string
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.errors import ConfigError
from tidings.transports.nats.config import (
    NatsConfig,
    StreamSettings,
    parse_duration,
    parse_nats_url,
)

A_FILE = __file__  # options naming files need one that exists


def test_defaults() -> None:
    cfg = parse_nats_url("nats://127.0.0.1")
    assert cfg.servers == ("127.0.0.1:4222",)
    assert cfg.streams == StreamSettings()
    assert (cfg.streams.partitions, cfg.streams.replicas, cfg.streams.storage) == (8, 1, "file")
    assert (cfg.streams.max_age, cfg.streams.max_bytes) == (None, None)  # keep everything
    assert cfg.streams.duplicate_window == 120.0
    assert cfg.topics == ()
    assert (cfg.lease, cfg.ack_wait, cfg.max_deliver) == (10.0, 30.0, -1)
    assert (cfg.max_ack_pending, cfg.fetch_batch) == (1000, 256)
    assert (cfg.name, cfg.connect_timeout) == ("tidings", 5.0)
    assert (cfg.creds, cfg.nkey, cfg.token, cfg.user, cfg.password) == (None,) * 5
    assert cfg.tls is False
    assert cfg.server_urls() == ["nats://127.0.0.1:4222"]
    assert cfg.redacted_url() == "nats://127.0.0.1:4222"
    assert cfg == NatsConfig(servers=("127.0.0.1:4222",))


def test_several_servers_a_default_port_and_ipv6() -> None:
    cfg = parse_nats_url("nats://a:4223,b,[::1]:4224/")
    assert cfg.servers == ("a:4223", "b:4222", "[::1]:4224")
    assert cfg.server_urls() == ["nats://a:4223", "nats://b:4222", "nats://[::1]:4224"]


def test_every_option_is_parsed(tmp_path: Path) -> None:
    files = {}
    for option in ("creds", "tls_ca", "tls_cert", "tls_key"):
        files[option] = tmp_path / option
        files[option].write_text("x")
    cfg = parse_nats_url(
        "nats://h:1?partitions=3&replicas=5&storage=memory&max_age=7d&max_bytes=10GB"
        "&duplicate_window=500ms&lease=6s&ack_wait=1m&max_deliver=5&max_ack_pending=20"
        "&fetch_batch=100000&name=billing&connect_timeout=2.5s"
        f"&creds={files['creds']}&tls=true&tls_ca={files['tls_ca']}"
        f"&tls_cert={files['tls_cert']}&tls_key={files['tls_key']}&tls_hostname=nats.internal"
    )
    assert cfg.streams == StreamSettings(
        partitions=3,
        replicas=5,
        storage="memory",
        max_age=7 * 86400.0,
        max_bytes=10 << 30,
        duplicate_window=0.5,
    )
    assert (cfg.lease, cfg.ack_wait, cfg.max_deliver) == (6.0, 60.0, 5)
    assert (cfg.max_ack_pending, cfg.fetch_batch) == (20, 100_000)
    assert (cfg.name, cfg.connect_timeout) == ("billing", 2.5)
    assert cfg.creds == str(files["creds"])
    assert (cfg.tls_ca, cfg.tls_cert, cfg.tls_key) == (
        str(files["tls_ca"]), str(files["tls_cert"]), str(files["tls_key"])
    )  # fmt: skip
    assert (cfg.tls, cfg.tls_hostname) == (True, "nats.internal")
    assert cfg.server_urls() == ["tls://h:1"]


def test_an_nkey_seed_file_is_a_way_to_authenticate(tmp_path: Path) -> None:
    seed = tmp_path / "app.nk"
    seed.write_text("SUA...")
    cfg = parse_nats_url(f"nats://h?nkey={seed}")
    assert cfg.nkey == str(seed)
    assert cfg.tls is False


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30.0),
        ("1.5", 1.5),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("5M", 300.0),  # units are not case-sensitive
        (" 10s ", 10.0),
    ],
)
def test_durations_take_seconds_or_a_unit(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert parse_nats_url(f"nats://h?max_age={quote(text)}").streams.max_age == pytest.approx(
        seconds
    )


@pytest.mark.parametrize("text", ["", "soon", "-1s", "1w", "1.s", "5 m", "1e3", "1h30m"])
def test_a_bad_duration_names_the_option_and_the_units(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration(text, "lease")
    assert f"lease={text!r}" in str(info.value)
    assert "e.g. lease=30s (or 500ms, 5m, 2h, 7d)" in str(info.value)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1 << 20),
        ("7b", 7),
        ("1kb", 1 << 10),
        ("500MB", 500 << 20),
        ("10GB", 10 << 30),
        ("2tb", 2 << 40),
        ("10 GB", 10 << 30),
    ],
)
def test_sizes_take_bytes_or_a_unit(text: str, size: int) -> None:
    assert parse_nats_url(f"nats://h?max_bytes={quote(text)}").streams.max_bytes == size


def test_per_topic_overrides_start_from_the_urls_stream_settings() -> None:
    cfg = parse_nats_url(
        "nats://h?partitions=4&max_age=7d&topic.audit.max_age=30d&topic.audit.storage=memory"
        "&topic.task.events.partitions=16&topic.task.events.max_bytes=1GB"
    )
    base = StreamSettings(partitions=4, max_age=7 * 86400.0)
    assert cfg.streams == base
    assert cfg.topics == (
        ("audit", replace(base, max_age=30 * 86400.0, storage="memory")),
        ("task.events", replace(base, partitions=16, max_bytes=1 << 30)),
    )
    assert cfg.stream("audit").max_age == 30 * 86400.0
    assert cfg.stream("audit").partitions == 4
    assert cfg.stream("task.events").partitions == 16  # a topic name may hold dots
    assert cfg.stream("task").partitions == 4
    assert cfg.stream("other") is cfg.streams


def test_the_last_of_a_repeated_option_wins() -> None:
    assert parse_nats_url("nats://h?partitions=2&partitions=3").streams.partitions == 3


@pytest.mark.parametrize("value", ["true", "TRUE", "1"])
def test_tls_can_be_asked_for(value: str) -> None:
    cfg = parse_nats_url(f"nats://h?tls={value}")
    assert cfg.tls is True
    assert cfg.server_urls() == ["tls://h:4222"]


@pytest.mark.parametrize("value", ["false", "0"])
def test_tls_can_be_left_off(value: str) -> None:
    assert parse_nats_url(f"nats://h?tls={value}").tls is False


@pytest.mark.parametrize(
    "options",
    [
        "tls_ca={file}",
        "tls_cert={file}&tls_key={file}",
        "tls_hostname=nats.internal",
        "tls=false&tls_ca={file}",  # a CA file means TLS, whatever tls= says
    ],
)
def test_tls_options_imply_tls(options: str) -> None:
    cfg = parse_nats_url("nats://h?" + options.format(file=A_FILE))
    assert cfg.tls is True
    assert cfg.server_urls() == ["tls://h:4222"]
    assert "tls=True" in cfg.redacted_url()


def test_user_and_password_in_the_userinfo_are_unescaped_and_the_password_hidden() -> None:
    cfg = parse_nats_url("nats://al%40ice:s%40cr%3At@h:4222")
    assert (cfg.user, cfg.password, cfg.token) == ("al@ice", "s@cr:t", None)
    assert "s@cr:t" not in repr(cfg)
    assert "cr" not in cfg.redacted_url()
    assert cfg.redacted_url() == "nats://al%40ice:***@h:4222"


def test_a_token_in_the_userinfo_is_hidden() -> None:
    cfg = parse_nats_url("nats://hunter%3A2@h:4222?partitions=2")
    assert (cfg.token, cfg.user, cfg.password) == ("hunter:2", None, None)
    assert "hunter" not in repr(cfg)
    assert cfg.redacted_url() == "nats://***@h:4222?partitions=2"


def test_credentials_can_be_query_options() -> None:
    cfg = parse_nats_url("nats://h?user=app&password=hunter2")
    assert (cfg.user, cfg.password) == ("app", "hunter2")
    assert "hunter2" not in repr(cfg)
    assert "hunter2" not in cfg.redacted_url()
    assert cfg.redacted_url() == "nats://app:***@h:4222"
    cfg = parse_nats_url("nats://h?token=hunter2")
    assert cfg.token == "hunter2"
    assert "hunter2" not in repr(cfg)
    assert cfg.redacted_url() == "nats://***@h:4222"


def test_the_userinfo_wins_over_query_credentials() -> None:
    cfg = parse_nats_url("nats://app:one@h?user=other&password=two")
    assert (cfg.user, cfg.password) == ("app", "one")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("nats://h?partitons=3", "unknown option(s) partitons"),
        ("nats://h?partitions=0", "partitions='0' in the nats:// URL must be from 1 to 4096"),
        ("nats://h?partitions=4097", "partitions='4097' in the nats:// URL must be from 1 to"),
        ("nats://h?partitions=many", "partitions='many' in the nats:// URL is not an integer"),
        ("nats://h?partitions=1.5", "partitions='1.5' in the nats:// URL is not an integer"),
        ("nats://h?replicas=0", "replicas='0' in the nats:// URL must be from 1 to 5"),
        ("nats://h?replicas=6", "replicas='6' in the nats:// URL must be from 1 to 5"),
        ("nats://h?storage=disk", "storage='disk' in the nats:// URL must be file or memory"),
        ("nats://h?max_age=0", "max_age='0' in the nats:// URL must be more than 0"),
        ("nats://h?max_age=1w", "max_age='1w' in the nats:// URL is not a duration"),
        ("nats://h?duplicate_window=0s", "duplicate_window='0s' in the nats:// URL must be more"),
        ("nats://h?lease=soon", "lease='soon' in the nats:// URL is not a duration"),
        ("nats://h?ack_wait=-5s", "ack_wait='-5s' in the nats:// URL is not a duration"),
        ("nats://h?connect_timeout=0", "connect_timeout='0' in the nats:// URL must be more"),
        ("nats://h?max_bytes=0", "max_bytes='0' in the nats:// URL is not a size in bytes"),
        ("nats://h?max_bytes=1.5GB", "max_bytes='1.5GB' in the nats:// URL is not a size"),
        ("nats://h?max_bytes=10G", "max_bytes='10G' in the nats:// URL is not a size"),
        ("nats://h?max_deliver=0", "max_deliver='0' in the nats:// URL must be -1 (unlimited)"),
        ("nats://h?max_deliver=-2", "max_deliver='-2' in the nats:// URL must be >= -1"),
        ("nats://h?max_deliver=x", "max_deliver='x' in the nats:// URL is not an integer"),
        ("nats://h?max_ack_pending=0", "max_ack_pending='0' in the nats:// URL must be >= 1"),
        ("nats://h?fetch_batch=0", "fetch_batch='0' in the nats:// URL must be from 1 to 100000"),
        ("nats://h?fetch_batch=100001", "fetch_batch='100001' in the nats:// URL must be from"),
        ("nats://h?tls=yes", "tls='yes' in the nats:// URL must be true or false"),
        ("nats://h?user=app", "user and password go together"),
        ("nats://h?password=hunter2", "(got a password alone)"),
        ("nats://tok@h?user=app&password=pw", "gives token and user: choose one way"),
        ("nats://app:pw@h?token=tok", "gives token and user: choose one way"),
        ("nats://h?lease=90s", "ack_wait=30s must be longer than"),
        ("nats://h?lease=30s&ack_wait=10s", "ack_wait=10s must be longer than"),
        ("nats://h:notaport", "server address 'h:notaport' in 'nats://h:notaport' is not"),
        ("nats://h:0", "server address 'h:0'"),
        ("nats://h:65536", "server address 'h:65536'"),
        ("nats://:4222", "server address ':4222'"),
        ("nats://h:", "server address 'h:'"),
        ("nats://a,,b", "server address ''"),
        ("nats://", "names no server"),
        ("nats://u:p@", "names no server"),
        ("nats://h:4222/task-events", "has a path '/task-events'; options go in the query"),
        ("kafka://h:9092", "not a NATS URL"),
        ("tls://h:4222", "not a NATS URL"),
        ("127.0.0.1:4222", "not a NATS URL"),
        ("nats://h?partitions", "the query of 'nats://h?partitions' is not name=value"),
        ("nats://h?topic.audit.lease=1s", "topic.audit.lease='1s' in the nats:// URL is not"),
        ("nats://h?topic.partitions=3", "topic.partitions='3'"),
        ("nats://h?topic..partitions=3", "topic..partitions='3'"),
    ],
)
def test_bad_urls_name_the_option_and_show_an_example(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_nats_url(url)
    assert says in str(info.value)
    assert "e.g." in str(info.value)


@pytest.mark.parametrize("option", ["creds", "nkey", "tls_ca", "tls_cert", "tls_key"])
@pytest.mark.parametrize("path", ["/no/such/file", "/"])  # a folder is not a file
def test_a_file_option_must_name_a_file(option: str, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_nats_url(f"nats://h?{option}={path}")
    assert f"{option}={path!r} in the nats:// URL names no file" in str(info.value)
    assert f"e.g. {option}=/etc/nats/" in str(info.value)


@pytest.mark.parametrize(
    ("options", "ways"),
    [
        ("creds={file}&nkey={file}", "creds and nkey"),
        ("creds={file}&token=t", "creds and token"),
        ("nkey={file}&user=u&password=p", "nkey and user"),
        ("token=t&user=u&password=p", "token and user"),
    ],
)
def test_one_way_to_authenticate(options: str, ways: str) -> None:
    with pytest.raises(ConfigError, match=f"gives {ways}: choose one way to authenticate"):
        parse_nats_url("nats://h?" + options.format(file=A_FILE))


@pytest.mark.parametrize("given", ["tls_cert", "tls_key"])
def test_a_client_certificate_and_its_key_go_together(given: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_nats_url(f"nats://h?{given}={A_FILE}")
    assert "tls_cert and tls_key go together" in str(info.value)
    assert "e.g. tls_cert=/etc/nats/client.pem&tls_key=/etc/nats/client.key" in str(info.value)


def test_ack_wait_must_outlast_a_part_of_the_lease() -> None:
    assert parse_nats_url("nats://h?lease=30s&ack_wait=30s").ack_wait == 30.0
    with pytest.raises(ConfigError, match=r"of lease=30s.*e.g. ack_wait=30s&lease=10s"):
        parse_nats_url("nats://h?lease=30s&ack_wait=10s")


def test_ack_wait_leaves_a_heartbeat_to_mark_a_slow_event_before_redelivery() -> None:
    # lease=10s: heartbeats every 3.3 s; ack_wait=5s: marked once older than 2.5 s, so
    # an event delivered just after a heartbeat is marked at 3.3 s, one delivered 2.4 s
    # before a heartbeat only at 5.7 s: the server redelivered it at 5 s (and counted a
    # delivery against max_deliver).
    with pytest.raises(ConfigError, match="ack_wait"):
        parse_nats_url("nats://h?lease=10s&ack_wait=5s")


@pytest.mark.parametrize(
    "option", ["partitions=0", "replicas=9", "storage=disk", "max_age=0", "max_bytes=1G"]
)
def test_a_bad_per_topic_value_names_the_per_topic_option(option: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_nats_url(f"nats://h?topic.audit.{option}")
    name, _, value = option.partition("=")
    assert f"topic.audit.{name}={value!r}" in str(info.value)
    assert "e.g." in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "nats://h:bad?user=app&password=hunter2",  # bad host:port
        "nats://h/path?token=hunter2",  # a path
        "nats://h?token=hunter2&partitions",  # a query that is not name=value
    ],
)
def test_a_query_secret_is_not_in_error_messages(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_nats_url(url)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "nats://app:hunter2@h:bad",
        "nats://app:hunter2@h/path",
        "nats://hunter2@h?partitions",
        "nats://app:hunter2@h?lease=90s",
        "nats://app:hunter2@",
        "natss://app:hunter2@h",
    ],
)
def test_a_userinfo_secret_is_not_in_error_messages(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_nats_url(url)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("url", ["nats://[::1", "nats://[bad]:4222"])
def test_a_malformed_ipv6_address_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match=r"e\.g\."):
        parse_nats_url(url)


def test_an_ipv6_address_without_a_port_takes_the_default_port() -> None:
    assert parse_nats_url("nats://[::1]").servers == ("[::1]:4222",)


def test_secrets_are_not_in_the_repr() -> None:
    cfg = NatsConfig(servers=("h:4222",), token="tok-secret", password="pw-secret", user="u")
    assert "secret" not in repr(cfg)
    assert "user='u'" in repr(cfg)


def test_config_is_frozen() -> None:
    cfg = NatsConfig(servers=("h:4222",))
    with pytest.raises(AttributeError):
        cfg.lease = 1.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        cfg.streams.partitions = 2  # type: ignore[misc]


def test_open_transport_knows_nats_and_hides_the_password() -> None:
    from tidings.transports import open_transport

    t = open_transport("nats://u:secret@127.0.0.1:1?partitions=2")
    assert type(t).__name__ == "NatsTransport"
    assert t.url == "nats://u:***@127.0.0.1:1?partitions=2"
    with pytest.raises(ConfigError, match="partitons"):
        open_transport("nats://h?partitons=2")


async def test_a_missing_client_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from tidings.transports.nats import NatsTransport

    monkeypatch.setitem(sys.modules, "nats", None)
    with pytest.raises(ConfigError, match=r"install `tidings\[nats\]`"):
        await NatsTransport("nats://127.0.0.1:1").start()


# -- redacted_url round-trips ----------------------------------------------------------


def _same(a: NatsConfig, b: NatsConfig) -> bool:
    """Equal as configs: the same settings for every topic, however they are spelled."""
    names = {n for n, _ in a.topics} | {n for n, _ in b.topics}
    return replace(a, topics=()) == replace(b, topics=()) and all(
        a.stream(n) == b.stream(n) for n in names
    )


def _hidden(cfg: NatsConfig) -> NatsConfig:
    """``cfg`` as its redacted URL parses: secrets are ``***``."""
    return replace(
        cfg,
        password=None if cfg.password is None else "***",
        token=None if cfg.token is None else "***",
    )


@pytest.mark.parametrize(
    "url",
    [
        "nats://h?partitions=4&topic.audit.partitions=8",  # back to the default: dropped
        "nats://h?name=a%26b",  # written name=a&b
        "nats://app:@h",  # user with an empty password, written as a token app@h
    ],
)
def test_the_redacted_url_means_the_same_config(url: str) -> None:
    cfg = parse_nats_url(url)
    assert _same(parse_nats_url(cfg.redacted_url()), _hidden(cfg))


def _with_unit(units: list[str], high: int) -> st.SearchStrategy[str]:
    return st.builds(lambda n, u: f"{n}{u}", st.integers(1, high), st.sampled_from(units))


_durations = _with_unit(["", "ms", "s", "m", "h", "d"], 1000)
_NAME = st.text(string.ascii_lowercase + string.digits + "_-", min_size=1, max_size=10)
# Every printable ASCII character (quoted in the URL), behind a marker nothing else holds.
_SECRET = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=12).map(
    lambda s: "SECRET" + s
)
_STREAM_VALUES: dict[str, st.SearchStrategy[str]] = {
    "partitions": st.integers(1, 4096).map(str),
    "replicas": st.integers(1, 5).map(str),
    "storage": st.sampled_from(["file", "memory", "FILE", "Memory"]),
    "max_age": _durations,
    "max_bytes": _with_unit(["", "b", "kb", "mb", "gb", "tb"], 1023),
    "duplicate_window": _durations,
}
_OTHER_VALUES: dict[str, st.SearchStrategy[str]] = {
    "max_deliver": st.sampled_from(["-1", "1", "2", "50"]),
    "max_ack_pending": st.integers(1, 100_000).map(str),
    "fetch_batch": st.integers(1, 100_000).map(str),
    "name": _NAME,
    "connect_timeout": _durations,
    "tls": st.sampled_from(["true", "false", "1", "0"]),
    "tls_ca": st.just(A_FILE),
    "tls_hostname": _NAME,
}
_SERVER = st.builds(
    lambda host, port: host if port is None else f"{host}:{port}",
    st.sampled_from(["127.0.0.1", "nats.example", "n-1"]),
    st.none() | st.integers(1, 65535),
) | st.integers(1, 65535).map(lambda port: f"[::1]:{port}")
_TOPIC = st.from_regex(r"[a-z][a-z0-9_-]{0,6}(\.[a-z0-9]{1,4})?", fullmatch=True)
_AUTH = ["none", "userinfo", "query-user", "token", "query-token", "creds", "nkey"]


@st.composite
def valid_urls(draw: st.DrawFn) -> str:
    query: dict[str, str] = {}

    def some(values: dict[str, st.SearchStrategy[str]], prefix: str = "") -> None:
        for name in draw(st.lists(st.sampled_from(sorted(values)), unique=True)):
            query[prefix + name] = draw(values[name])

    some(_STREAM_VALUES)
    for topic in draw(st.lists(_TOPIC, unique=True, max_size=3)):
        some(_STREAM_VALUES, f"topic.{topic}.")
    some({"lease": _durations, "ack_wait": _durations})
    lease = parse_duration(query.get("lease", "10"))
    if parse_duration(query.get("ack_wait", "30")) <= lease * 2 / 3:
        query["ack_wait"] = f"{lease!r}"  # shorter ones are refused
    some(_OTHER_VALUES)
    if draw(st.booleans()):
        query["tls_cert"] = query["tls_key"] = A_FILE
    auth, secret = draw(st.sampled_from(_AUTH)), draw(_SECRET)
    user = draw(st.text(string.ascii_lowercase + "@:.", min_size=1, max_size=8))
    userinfo = {
        "userinfo": f"{quote(user, safe='')}:{quote(secret, safe='')}@",
        "token": quote(secret, safe="") + "@",
    }.get(auth, "")
    query.update(
        {
            "query-user": {"user": user, "password": secret},
            "query-token": {"token": secret},
            "creds": {"creds": A_FILE},
            "nkey": {"nkey": A_FILE},
        }.get(auth, {})
    )
    pairs = [f"{k}={quote(v, safe='')}" for k, v in draw(st.permutations(sorted(query.items())))]
    servers = ",".join(draw(st.lists(_SERVER, min_size=1, max_size=3)))
    return f"nats://{userinfo}{servers}" + ("?" + "&".join(pairs) if pairs else "")


@settings(max_examples=300, deadline=None)
@given(valid_urls())
def test_the_redacted_url_parses_back_to_the_config_without_its_secrets(url: str) -> None:
    cfg = parse_nats_url(url)
    redacted = cfg.redacted_url()
    again = parse_nats_url(redacted)
    assert _same(again, _hidden(cfg)), redacted
    assert again.redacted_url() == redacted
    for secret in (cfg.password, cfg.token):
        if secret is not None:
            for shown in (redacted, repr(cfg), repr(again)):
                assert secret not in shown
                assert quote(secret, safe="") not in shown


_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)
_KNOWN = [*_STREAM_VALUES, *(f"topic.t.{k}" for k in _STREAM_VALUES), *_OTHER_VALUES]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([*_KNOWN, "lease", "ack_wait", "user", "password"]) | _TEXT, _TEXT)
def test_any_option_is_taken_or_refused_with_a_config_error(name: str, value: str) -> None:
    try:  # anything but a ConfigError escapes and fails the test
        parse_nats_url(f"nats://h?{quote(name, safe='')}={quote(value, safe='')}")
    except ConfigError as exc:
        refusal = str(exc)
    else:
        return
    assert "e.g." in refusal


async def test_keep_unread_is_refused_with_the_reason() -> None:
    from tidings.transports.nats import NatsTransport

    with pytest.raises(ConfigError, match="keep_unread needs a log that deletes records itself"):
        await NatsTransport("nats://127.0.0.1:9").create_topic("audit", keep_unread=True)
