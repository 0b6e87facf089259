"""The command line: `enkit demo` prints a table and writes a PNG."""

import subprocess
import sys

import pytest

from enkit.cli import main


def test_demo_prints_table_and_writes_png(tmp_path, capsys):
    fig = tmp_path / "demo.png"
    assert main(["demo", "--cycles", "300", "--burn-in", "100", "--figure", str(fig)]) == 0
    out = capsys.readouterr().out
    for label in ("analysis RMSE", "analysis spread", "cycles per second", "etkf"):
        assert label in out
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_float32_and_another_scheme(tmp_path, capsys):
    fig = tmp_path / "d.png"
    main(["demo", "--cycles", "200", "--burn-in", "50", "--scheme", "ensrf",
          "--dtype", "float32", "--figure", str(fig)])
    out = capsys.readouterr().out
    assert "float32" in out and "ensrf" in out and fig.exists()


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        main(["nonsense"])


def test_module_entry_point_shows_demo_options():
    res = subprocess.run([sys.executable, "-m", "enkit.cli", "demo", "--help"],
                         capture_output=True, text=True, check=True)
    assert "--inflation" in res.stdout
