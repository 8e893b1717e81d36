"""Settings resolution: arguments > environment > YAML file > defaults, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from remoteexec.config import DEFAULT_URL, Settings, redact_url, resolve
from remoteexec.errors import ConfigurationError

ENV = (
    *("REMOTEEXEC_URL", "REMOTEEXEC_SECRET", "REMOTEEXEC_TIMEOUT", "REMOTEEXEC_CONFIG"),
    *("REMOTEEXEC_PASSWORD", "REMOTEEXEC_PASSWORD_FILE"),
)


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No remoteexec variables, and an empty working directory (no ./remoteexec.yaml)."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_yaml(folder: Path, text: str, name: str = "remoteexec.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    s = resolve()
    assert s == Settings(url=DEFAULT_URL)
    assert s.url == "sqlite:///remoteexec.db"
    assert (s.secrets, s.timeout, s.result_ttl, s.lease, s.max_attempts) == ((), None, 3600, 30, 3)
    assert (s.max_message_size, s.queue) == (64 * 2**20, "default")


def test_yaml_in_working_directory_overrides_defaults(clean: Path) -> None:
    write_yaml(
        clean,
        "url: redis://broker:6379/0\nsecret: from-file\ntimeout: 12\nresult_ttl: 60\n"
        "max_message_size: 1024\nlease: 5.5\nmax_attempts: 7\nqueue: gpu\n",
    )
    s = resolve()
    assert s == Settings(
        url="redis://broker:6379/0",
        secrets=("from-file",),
        timeout=12.0,
        result_ttl=60.0,
        max_message_size=1024,
        lease=5.5,
        max_attempts=7,
        queue="gpu",
    )


def test_yaml_secrets_list_and_empty_file(clean: Path) -> None:
    write_yaml(clean, "secrets: [new, old]\n")
    assert resolve().secrets == ("new", "old")
    write_yaml(clean, "")
    assert resolve() == Settings()


def test_remoteexec_config_names_the_file_and_wins_over_the_working_directory(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_yaml(clean, "url: memory://\nqueue: local\n")
    other = write_yaml(clean, "queue: chosen\n", name="other.yaml")
    monkeypatch.setenv("REMOTEEXEC_CONFIG", str(other))
    s = resolve()
    assert s.queue == "chosen"
    assert s.url == DEFAULT_URL  # ./remoteexec.yaml is not read at all


def test_environment_overrides_yaml(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_yaml(clean, "url: memory://\nsecret: file-secret\ntimeout: 1\nqueue: gpu\n")
    monkeypatch.setenv("REMOTEEXEC_URL", "redis://env-host/1")
    monkeypatch.setenv("REMOTEEXEC_SECRET", " new , old ,")
    monkeypatch.setenv("REMOTEEXEC_TIMEOUT", "2.5")
    s = resolve()
    assert (s.url, s.secrets, s.timeout, s.queue) == (
        "redis://env-host/1",
        ("new", "old"),
        2.5,
        "gpu",
    )


def test_empty_environment_variables_count_as_unset(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_yaml(clean, "url: memory://\n")
    for name in ENV[:3]:
        monkeypatch.setenv(name, "")
    assert resolve().url == "memory://"


def test_arguments_override_environment_and_yaml(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_yaml(clean, "url: memory://\nqueue: gpu\nlease: 9\n")
    monkeypatch.setenv("REMOTEEXEC_URL", "redis://env-host/1")
    monkeypatch.setenv("REMOTEEXEC_SECRET", "env-secret")
    monkeypatch.setenv("REMOTEEXEC_TIMEOUT", "2.5")
    s = resolve("mysql://u:p@db:3306/q", secret=["a", "b"], timeout=7, queue="cpu")
    assert (s.url, s.secrets, s.timeout, s.queue) == (
        "mysql://u:p@db:3306/q",
        ("a", "b"),
        7.0,
        "cpu",
    )
    assert s.lease == 9.0  # not given explicitly: still from the file


def test_none_arguments_count_as_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMOTEEXEC_TIMEOUT", "4")
    assert resolve(None, timeout=None, secret=None).timeout == 4.0


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"colour": "red"}, "colour"),
        ({"timeout": -1}, "-1"),
        ({"timeout": 0}, "0"),
        ({"timeout": "soon"}, "soon"),
        ({"timeout": True}, "True"),
        ({"timeout": float("nan")}, "nan"),
        ({"lease": float("inf")}, "inf"),
        ({"result_ttl": -5}, "-5"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2.5}, "2.5"),
        ({"max_message_size": "big"}, "big"),
        ({"queue": ""}, "queue"),
        ({"queue": 3}, "3"),
        ({"secret": "a", "secrets": ["b"]}, "not both"),
    ],
)
def test_bad_options_raise_configuration_error_naming_the_value(
    options: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        resolve(**options)  # type: ignore[arg-type]
    assert named in str(info.value)


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("localhost:6379", "localhost:6379"),
        ("/var/run/redis.sock", "/var/run/redis.sock"),
        ("amqp://rabbit/", "'amqp'"),
        ("http://user:hunter2@example.com/", "'http'"),
        ("redis://host:notaport/0", "redis://host:notaport/0"),
        ("", "url"),
    ],
)
def test_bad_urls_raise_configuration_error_naming_them(url: str, named: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        resolve(url)
    assert named in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://h",
        "rediss://h:6380/0",
        "unix:///tmp/r.sock",
        "mysql://u:p@h/db",
        "sqlite:///rel.db",
        "sqlite:////abs/path.db",
        "memory://",
        "REDIS://h",
    ],
)
def test_every_supported_scheme_is_accepted(url: str) -> None:
    assert resolve(url).url == url


def test_bad_environment_timeout_names_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMOTEEXEC_TIMEOUT", "ten")
    with pytest.raises(ConfigurationError, match=r"REMOTEEXEC_TIMEOUT='ten'"):
        resolve()
    monkeypatch.setenv("REMOTEEXEC_TIMEOUT", "-3")
    with pytest.raises(ConfigurationError, match=r"-3\.0.*environment"):
        resolve()


def test_bad_environment_url_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMOTEEXEC_URL", "ftp://admin:hunter2@host/")
    with pytest.raises(ConfigurationError) as info:
        resolve()
    assert "ftp://admin:***@host/" in str(info.value)
    assert "environment" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_environment_secret_of_only_commas_is_refused_without_echoing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REMOTEEXEC_SECRET", " , ")
    with pytest.raises(ConfigurationError, match="REMOTEEXEC_SECRET"):
        resolve()


@pytest.mark.parametrize("secret", [["ok", ""], 12345, [b"bytes-secret"], []])
def test_bad_secrets_are_refused_without_echoing_them(secret: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        resolve(secret=secret)
    assert "secret" in str(info.value)
    for shown in ("12345", "bytes-secret", "ok"):
        assert shown not in str(info.value)


def test_yaml_that_is_not_a_mapping(clean: Path) -> None:
    path = write_yaml(clean, "- redis://host\n- memory://\n")
    with pytest.raises(ConfigurationError, match=r"mapping.*list") as info:
        resolve()
    assert str(path) in str(info.value)


def test_yaml_with_an_unknown_key_names_it(clean: Path) -> None:
    write_yaml(clean, "url: memory://\ncolour: red\n")
    with pytest.raises(ConfigurationError, match="'colour'"):
        resolve()


def test_yaml_with_a_bad_value_names_value_and_file(clean: Path) -> None:
    path = write_yaml(clean, "timeout: -2\n")
    with pytest.raises(ConfigurationError, match="-2") as info:
        resolve()
    assert str(path) in str(info.value)


def test_invalid_yaml_never_quotes_the_file(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_yaml(clean, 'secret: "topsecret-value\nurl: [memory://\n', name="bad.yaml")
    monkeypatch.setenv("REMOTEEXEC_CONFIG", str(path))
    with pytest.raises(ConfigurationError, match="not valid YAML") as info:
        resolve()
    assert str(path) in str(info.value)
    assert "topsecret" not in str(info.value)


def test_unreadable_or_missing_config_file_given_explicitly(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = clean / "nope.yaml"
    monkeypatch.setenv("REMOTEEXEC_CONFIG", str(missing))
    with pytest.raises(ConfigurationError, match=r"nope\.yaml"):
        resolve()
    monkeypatch.setenv("REMOTEEXEC_CONFIG", str(clean))  # a folder
    with pytest.raises(ConfigurationError, match="cannot read"):
        resolve()


def test_yaml_is_loaded_safely(clean: Path) -> None:
    write_yaml(clean, "queue: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ConfigurationError, match="not valid YAML"):
        resolve()


def test_yaml_url_with_password_is_redacted_in_errors(clean: Path) -> None:
    write_yaml(clean, "url: gopher://bob:s3cr3t@host/\n")
    with pytest.raises(ConfigurationError) as info:
        resolve()
    assert "s3cr3t" not in str(info.value)
    assert "gopher://bob:***@host/" in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("mysql://user:p%40ss@db:3306/app", "mysql://user:***@db:3306/app"),
        ("mysql://user:p@ss:w/rd@db/app", "mysql://user:***@db/app"),
        ("redis://host/0?password=pw&db=1", "redis://host/0?password=***&db=1"),
        ("rediss://u:pw@h/0?ssl_cert_reqs=required", "rediss://u:***@h/0?ssl_cert_reqs=required"),
        ("redis://user@host/0", "redis://user@host/0"),
        ("sqlite:///remoteexec.db", "sqlite:///remoteexec.db"),
        ("sqlite:////srv/me@work/x.db", "sqlite:////srv/me@work/x.db"),
        ("memory://", "memory://"),
        ("user:pw@host", "user:***@host"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_settings_repr_hides_secrets_and_passwords() -> None:
    s = resolve("redis://:hunter2@host/0", secret="topsecret")
    assert "hunter2" not in repr(s)
    assert "topsecret" not in repr(s)
    assert "redis://:***@host/0" in repr(s)


@pytest.mark.parametrize(
    "queue", ["q" * 10_000, "line\nbreak", "bell\x07", "sep\u2028", "nul\x00"], ids=len
)
def test_a_bad_queue_name_is_refused_naming_it_cut_short(clean: Path, queue: str) -> None:
    with pytest.raises(ConfigurationError, match="queue name") as info:
        resolve(queue=queue)
    message = str(info.value)
    assert repr(queue)[:40] in message and len(message) < 300
    write_yaml(clean, f"queue: {json.dumps(queue)}\n")
    with pytest.raises(ConfigurationError, match=r"queue name.*config file") as info:
        resolve()
    assert len(str(info.value)) < 400


def test_queue_names_are_kept_exactly_up_to_the_longest() -> None:
    assert resolve(queue="iso ").queue == "iso "
    assert resolve(queue=" é-ü/x:y{z}").queue == " é-ü/x:y{z}"
    assert resolve(queue="q" * 128).queue == "q" * 128
    with pytest.raises(ConfigurationError, match="at most 128 characters, not 129"):
        resolve(queue="q" * 129)


def test_check_name_names_the_kind_and_the_value() -> None:
    from remoteexec.config import check_name

    assert check_name("method", "run_2") == "run_2"
    with pytest.raises(ConfigurationError, match=r"method name must be a Python identifier.*'a-b'"):
        check_name("method", "a-b")
    with pytest.raises(ConfigurationError, match="at most 100 characters"):
        check_name("method", "m" * 101)
    with pytest.raises(ConfigurationError, match=r"task name must be a string, not b'x'"):
        check_name("task", b"x")


@pytest.mark.parametrize("value", [0, -1, 1001, 2.5, "3", True])
def test_max_attempts_out_of_range_is_refused_everywhere_it_is_given(value) -> None:
    """Workers refuse calls with max_attempts above 1000: the caller is told first."""
    from remoteexec import proxy, remote
    from remoteexec.proxy import CallOptions

    with pytest.raises(ConfigurationError, match="max_attempts"):
        resolve("memory://", max_attempts=value)
    with pytest.raises(ConfigurationError, match="max_attempts"):
        CallOptions(max_attempts=value)
    with pytest.raises(ConfigurationError, match="max_attempts"):
        proxy("Anything", max_attempts=value)
    with pytest.raises(ConfigurationError, match="max_attempts"):
        remote(max_attempts=value)
    assert resolve("memory://", max_attempts=1000).max_attempts == 1000


# A password kept apart from the URL (remoteexec/credentials.py) -------------------------------


@pytest.mark.parametrize(
    ("url", "filled"),
    [
        ("redis://127.0.0.1:6379/0", "redis://:p%40ss%3Aw%2Frd@127.0.0.1:6379/0"),
        ("rediss://app@broker/1", "rediss://app:p%40ss%3Aw%2Frd@broker/1"),
        ("mysql://app@db.local:3307/jobs", "mysql://app:p%40ss%3Aw%2Frd@db.local:3307/jobs"),
        ("mysql://app:@db.local/jobs", "mysql://app:p%40ss%3Aw%2Frd@db.local/jobs"),
        ("unix:///run/redis.sock?db=2", "unix://:p%40ss%3Aw%2Frd@/run/redis.sock?db=2"),
    ],
)
def test_a_password_setting_is_filled_into_the_url(
    monkeypatch: pytest.MonkeyPatch, url: str, filled: str
) -> None:
    monkeypatch.setenv("REMOTEEXEC_PASSWORD", "p@ss:w/rd")
    assert resolve(url).backend_url == filled
    monkeypatch.setenv("REMOTEEXEC_URL", url)
    settings = resolve()
    assert (settings.url, settings.password, settings.backend_url) == (url, "p@ss:w/rd", filled)
    assert "p@ss" not in repr(settings) and "password=<hidden>" in repr(settings)
    # An argument wins over the environment, as for every setting.
    assert resolve(url, password="arg").backend_url == filled.replace("p%40ss%3Aw%2Frd", "arg")


def test_a_password_file_is_read_without_its_trailing_line_break(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean / "pw").write_text("s3cret \n")
    monkeypatch.setenv("REMOTEEXEC_PASSWORD_FILE", str(clean / "pw"))
    assert resolve("redis://h/0").backend_url == "redis://:s3cret%20@h/0"


@pytest.mark.parametrize(
    ("content", "reason"), [(None, "No such file"), ("", "is empty"), ("\n", "is empty")]
)
def test_a_missing_or_empty_password_file_names_its_path(
    clean: Path, monkeypatch: pytest.MonkeyPatch, content: str | None, reason: str
) -> None:
    path = clean / "pw"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("REMOTEEXEC_PASSWORD_FILE", str(path))
    with pytest.raises(ConfigurationError, match=reason) as info:
        resolve("redis://h/0")
    assert str(path) in str(info.value)


def test_an_unreadable_password_file_names_its_path_never_its_content(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean / "folder").mkdir()
    (clean / "latin1").write_bytes(b"hunter2\xe9")
    for path, reason in ((clean / "folder", "Is a directory"), (clean / "latin1", "not UTF-8")):
        monkeypatch.setenv("REMOTEEXEC_PASSWORD_FILE", str(path))
        with pytest.raises(ConfigurationError, match="cannot read the password file") as info:
            resolve("redis://h/0")
        assert str(path) in str(info.value) and reason in str(info.value)
        assert "hunter2" not in str(info.value)


def test_a_url_with_a_password_plus_a_password_setting_is_ambiguous(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    urls = ("redis://:in-url@h/0", "redis://h/0?password=in-url", "mysql://u:in-url@h/db")
    for url in urls:
        with pytest.raises(ConfigurationError, match="one place only") as info:
            resolve(url, password="in-url")  # even the same one
        assert "in-url" not in str(info.value)
    monkeypatch.setenv("REMOTEEXEC_PASSWORD", "other-pw")
    for url in urls:
        with pytest.raises(ConfigurationError, match=r"is set too \(environment\)") as info:
            resolve(url)
        assert "in-url" not in str(info.value) and "other-pw" not in str(info.value)
    # Resolving resolved settings again (a worker's, for its tasks' client) changes nothing.
    settings = resolve("redis://h/0")
    again = resolve(settings.url, password=settings.password)
    assert again == settings and again.backend_url == "redis://:other-pw@h/0"


def test_both_password_variables_or_a_url_that_takes_none_are_errors(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REMOTEEXEC_PASSWORD", "pw")
    for url in ("sqlite:///x.db", "memory://m"):
        with pytest.raises(ConfigurationError, match="takes none"):
            resolve(url)
    with pytest.raises(ConfigurationError, match="non-empty string, not a int") as info:
        resolve("redis://h/0", password=1234)
    assert "1234" not in str(info.value)
    (clean / "pw").write_text("pw")
    monkeypatch.setenv("REMOTEEXEC_PASSWORD_FILE", str(clean / "pw"))
    with pytest.raises(ConfigurationError, match="give one"):
        resolve("redis://h/0")
