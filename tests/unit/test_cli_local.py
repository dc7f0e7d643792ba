"""The local-tooling commands when ``meterstream-local`` is not installed, or is broken.

The distribution is installed in the test venv, so "missing" is simulated by a finder
placed first on ``sys.meta_path`` that reports the module as not found, exactly as Python
does for an uninstalled one. The real, uninstalled case is in tests/packaging.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

import pytest

from connector import cli


class _Uninstalled:
    """A meta path finder for which one module does not exist."""

    def __init__(self, module_name: str) -> None:
        self.module_name = module_name

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname == self.module_name:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def _hide(monkeypatch: pytest.MonkeyPatch, module_name: str) -> None:
    """Make ``import module_name`` (and of anything below it) fail as if it were missing."""
    for loaded in [m for m in sys.modules if m == module_name or m.startswith(f"{module_name}.")]:
        monkeypatch.delitem(sys.modules, loaded)
    monkeypatch.setattr(sys, "meta_path", [_Uninstalled(module_name), *sys.meta_path])


@pytest.mark.parametrize(
    "argv",
    [
        ["demo"],
        ["demo", "--records", "10", "--workers", "2"],
        ["demo", "--help"],
        ["emulator", "--port", "0"],
        ["local-kafka", "--port", "0"],
    ],
)
def test_a_local_command_without_the_distribution_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    _hide(monkeypatch, cli.LOCAL_PACKAGE)

    code = cli.main(argv)

    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"meterstream {argv[0]} needs the local tooling: pip install 'meterstream[local]' "
        "(or for a checkout: pip install ./local)"
    ]


def test_help_still_lists_every_command_without_the_distribution(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _hide(monkeypatch, cli.LOCAL_PACKAGE)

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])

    assert exit_info.value.code == 0
    listed = capsys.readouterr().out
    for name, _module, summary, _description in cli.SUBCOMMANDS:
        assert name in listed
        assert summary.split()[0] in listed


def test_the_production_commands_run_without_the_distribution(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _hide(monkeypatch, cli.LOCAL_PACKAGE)

    code = cli.main(["check-config"])

    assert code == 0
    assert "bootstrap_servers" in capsys.readouterr().out


def test_a_broken_import_inside_the_distribution_is_not_mistaken_for_a_missing_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _hide(monkeypatch, "meterstream_local.emulator.cli")

    with pytest.raises(ModuleNotFoundError) as error:
        cli.main(["emulator", "--help"])

    assert error.value.name == "meterstream_local.emulator.cli"


@pytest.mark.parametrize(
    ("name", "flag"), [("demo", "--records"), ("emulator", "--port"), ("local-kafka", "--port")]
)
def test_the_local_commands_keep_their_flags_when_the_distribution_is_installed(
    capsys: pytest.CaptureFixture[str], name: str, flag: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])

    assert exit_info.value.code == 0
    assert flag in capsys.readouterr().out
