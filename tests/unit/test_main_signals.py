"""The command's own interrupt handling: an interrupt that comes out wrapped in another
exception (a signal landing while Python builds a class during an import) is still one
line and exit 130, never a traceback."""

from __future__ import annotations

import sys
import types

import pytest

from backfill import __main__ as entry


def test_an_interrupt_wrapped_by_an_import_is_one_line_and_exit_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def cli_main(argv: list[str] | None) -> None:
        try:
            raise entry.Interrupted(15)
        except entry.Interrupted as exc:
            raise RuntimeError("Error calling __set_name__ on 'cached_property'") from exc

    monkeypatch.setitem(sys.modules, "backfill.cli", types.SimpleNamespace(main=cli_main))
    with pytest.raises(SystemExit) as exited:
        entry.main([])
    assert exited.value.code == 130
    assert capsys.readouterr().err.strip() == entry.INTERRUPTED_LINE


def test_other_errors_and_exits_pass_through(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(argv: list[str] | None) -> None:
        raise RuntimeError("not an interrupt")

    monkeypatch.setitem(sys.modules, "backfill.cli", types.SimpleNamespace(main=failing))
    with pytest.raises(RuntimeError, match="not an interrupt"):
        entry.main([])

    def exiting(argv: list[str] | None) -> None:
        raise SystemExit(2)

    monkeypatch.setitem(sys.modules, "backfill.cli", types.SimpleNamespace(main=exiting))
    with pytest.raises(SystemExit) as exited:
        entry.main([])
    assert exited.value.code == 2
