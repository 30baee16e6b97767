"""The one progress shape (`Update`) and its one CLI renderer (`Reporter`)."""

from __future__ import annotations

import pytest

from fastmarco.cli.progress import Reporter
from fastmarco.progress import Update, noting


def test_counts_draw_one_bar_per_task_and_finished_bars_close(capsys: pytest.CaptureFixture[str]) -> None:
    reporter = Reporter(bars=True)
    reporter(Update("encode", 5, 10, "rows", detail={"tokens": 12_345, "shards": 1}))
    reporter(Update("verify", 1, 4, "B"))
    assert set(reporter.bars) == {"encode", "verify"}
    reporter(Update("encode", 10, 10, "rows"))
    assert set(reporter.bars) == {"verify"}
    reporter.close()
    assert not reporter.bars
    shown = capsys.readouterr().err
    assert "encode" in shown and "12,345" in shown and "verify" in shown


def test_notes_are_lines_and_bars_stay_off_where_not_asked(capsys: pytest.CaptureFixture[str]) -> None:
    with Reporter(bars=False) as reporter:
        say = noting(reporter, "index")
        say("training on 1,000 rows")
        reporter(Update("mine", 3, 9, "queries"))
        assert not reporter.bars
    assert capsys.readouterr().err == "training on 1,000 rows\n"
    with Reporter(bars=False, notes=False) as quiet:
        quiet(Update("index", note="nothing shown"))
    assert capsys.readouterr().err == ""


def test_noting_without_a_receiver_is_silent() -> None:
    noting(None, "index")("nobody listens")


def test_an_update_is_finished_only_with_a_total() -> None:
    assert Update("x", 3, 3).finished and not Update("x", 2, 3).finished and not Update("x", 9).finished
