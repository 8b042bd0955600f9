"""`cdc-bridge status` against a stub HTTP server standing in for the bridge's endpoint."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cdc_bridge.cli.main import main
from cdc_bridge.cli.status import status_lines, status_url, url_from_argument

STATUS = {
    "role": "streaming",
    "slot": "cdc_bridge",
    "confirmed_lsn": "0/16B3748",
    "lag_bytes": 1536,
    "in_flight": 3,
    "events_published": 120,
    "dead_lettered": 1,
    "last_error": None,
    "version": "0.1.0",
}


class StubBridge(BaseHTTPRequestHandler):
    body: bytes = json.dumps(STATUS).encode()
    requests: list[str] = []  # noqa: RUF012 (shared on purpose: the test reads it)

    def do_GET(self) -> None:
        StubBridge.requests.append(self.path)
        if self.path != "/status":
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean


@pytest.fixture
def stub_bridge() -> Iterator[str]:
    """The stub's host:port, as http.listen would name it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubBridge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    StubBridge.requests = []
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def write_config(tmp_path: Path, listen: str | None) -> Path:
    http = f"http: {{listen: '{listen}'}}\n" if listen else ""
    path = tmp_path / "bridge.yaml"
    path.write_text(
        "postgres: {dsn: 'postgresql://app:secret@127.0.0.1/app'}\n"
        "nats: {servers: [nats://127.0.0.1:4222], stream: {name: OUTBOX, subjects: [e.>]}}\n"
        "routes: [{subject: 'e.{event_type}'}]\n" + http
    )
    return path


def test_status_from_the_configs_http_listen(
    stub_bridge: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["status", "--config", str(write_config(tmp_path, stub_bridge))])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert StubBridge.requests == ["/status"]
    lines = out.splitlines()
    assert lines[0].split() == ["role", "streaming"]
    assert "lag               1.5 KiB (1536 bytes)" in lines
    assert "last error        none" in lines
    assert any(line.startswith("version") and line.endswith("0.1.0") for line in lines)


def test_status_json_is_the_bridges_object_unchanged(
    stub_bridge: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["status", "--url", f"http://{stub_bridge}/status", "--json"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert json.loads(out) == STATUS


def test_status_when_no_bridge_answers_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A port nobody listens on: bind one, note it, close it.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["status", "--url", f"http://127.0.0.1:{port}/status", "--timeout", "2"])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "cannot reach the bridge" in err


def test_status_of_something_else_says_so(
    stub_bridge: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["status", "--url", f"http://{stub_bridge}/elsewhere"])
    _, err = capsys.readouterr()
    assert code == 1 and "HTTP 404" in err


def test_status_needs_a_config_or_url(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error
        main(["status"])
    assert exit_info.value.code == 2
    assert "one of the arguments --config --url is required" in capsys.readouterr().err


def test_status_url_from_listen_addresses() -> None:
    assert status_url("127.0.0.1:8080") == "http://127.0.0.1:8080/status"
    assert status_url("0.0.0.0:8080") == "http://127.0.0.1:8080/status"
    assert status_url(":8080") == "http://127.0.0.1:8080/status"
    assert status_url("[::]:9000") == "http://[::1]:9000/status"
    assert status_url("[fe80::1]:9000") == "http://[fe80::1]:9000/status"


def test_status_lines_show_unknown_keys_too() -> None:
    lines = status_lines({"role": "standby", "versions": {"cdc_bridge": "0.1.0", "nats": None}})
    assert lines == ["role      standby", "versions  cdc_bridge 0.1.0"]  # nats: not known


def test_status_lines_show_times_in_utc_with_their_age_and_leave_out_nulls() -> None:
    error_at = 1796161503.579174  # 2026-12-01T21:45:03.58Z
    document: dict[str, object] = {
        "role": "reconnecting",
        "confirmed_lsn": None,
        "lag_bytes": None,
        "retained_bytes": None,
        "last_error": "NATS: connection refused",
        "last_error_at": error_at,
        "uptime_seconds": 7384.2,
    }
    lines = status_lines(document, now=error_at + 12.5)
    assert lines == [
        "role           reconnecting",
        "last error     NATS: connection refused",
        "last error at  2026-12-01T21:45:03Z, 12 s ago",
        "uptime         2 h 3 min",
    ]
    assert not any("None" in line or "1796" in line for line in lines)


def test_status_json_keeps_machine_values(
    stub_bridge: str, capsys: pytest.CaptureFixture[str]
) -> None:
    StubBridge.body = json.dumps({**STATUS, "last_error_at": 1796161503.579174}).encode()
    try:
        assert main(["status", "--url", f"http://{stub_bridge}/status", "--json"]) == 0
    finally:
        StubBridge.body = json.dumps(STATUS).encode()
    assert json.loads(capsys.readouterr().out)["last_error_at"] == 1796161503.579174


def test_status_url_argument_takes_a_base_url() -> None:
    assert url_from_argument("http://10.0.0.7:8080") == "http://10.0.0.7:8080/status"
    assert url_from_argument("http://10.0.0.7:8080/") == "http://10.0.0.7:8080/status"
    assert url_from_argument("10.0.0.7:8080") == "http://10.0.0.7:8080/status"
    assert url_from_argument("https://[::1]:8443") == "https://[::1]:8443/status"
    assert url_from_argument("http://h:80/status") == "http://h:80/status"
    assert url_from_argument("http://proxy/bridge/status") == "http://proxy/bridge/status"


def test_status_with_a_base_url_asks_status(
    stub_bridge: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--url", f"http://{stub_bridge}", "--json"]) == 0
    assert StubBridge.requests == ["/status"]
    assert json.loads(capsys.readouterr().out) == STATUS


def test_status_of_a_config_listening_on_port_0_says_to_pass_the_logged_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["status", "--config", str(write_config(tmp_path, "127.0.0.1:0"))])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert "pass --url" in err and "http_listening" in err and "127.0.0.1:0/status" not in err
