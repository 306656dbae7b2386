"""mhctl import: YAML on stdout, notes on stderr, one-line failures with mhctl's exit statuses."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mhd.config.validate import loads
from mhd.ctl import imports as cli
from mhd.ctl.main import main

KEEPALIVED = (
    "vrrp_instance V {\n}\nvirtual_server 10.0.0.1 80 {\n protocol TCP\n real_server 10.1.0.1 80\n}\n"
)


def run(argv: list[str]) -> int:
    """mhctl itself, its one parser and exit mapping."""
    return main(argv)


def test_keepalived_to_stdout_with_notes_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "keepalived.conf"
    conf.write_text(KEEPALIVED)
    assert run(["import", "keepalived", str(conf)]) == cli.EXIT_OK
    out, err = capsys.readouterr()
    assert [str(s.key) for s in loads(out).services] == ["tcp:10.0.0.1:80"]
    assert f"note: {conf}:1: vrrp_instance" in err and "1 services imported, 1 notes" in err


def test_ipvsadm_from_stdin_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = "-A -u 10.0.0.1:53 -s mh -b mh-port\n-a -u 10.0.0.1:53 -r 10.1.0.1:53 -g -w 1\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(rules))
    assert run(["import", "ipvsadm", "-"]) == cli.EXIT_OK
    from_stdin = capsys.readouterr().out
    (tmp_path / "rules").write_text(rules)
    assert run(["import", "ipvsadm", str(tmp_path / "rules")]) == cli.EXIT_OK
    from_file = capsys.readouterr().out
    assert loads(from_stdin).services == loads(from_file).services != ()


def test_unusable_input_is_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bin").write_bytes(b"\0\1\2")
    assert run(["import", "keepalived", str(tmp_path / "bin")]) == cli.EXIT_USAGE
    assert run(["import", "ipvsadm", str(tmp_path / "missing")]) == cli.EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        f"mhctl: {tmp_path / 'bin'}: not a text file (NUL byte at offset 0)",
        f"mhctl: {tmp_path / 'missing'}: cannot read: No such file or directory",
    ]


def test_live_kernel_failure_is_status_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert run(["import", "ipvsadm"]) == cli.EXIT_FAIL
    assert "ipvsadm is not installed" in capsys.readouterr().err
