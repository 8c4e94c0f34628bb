"""Unit: the CSV file sink (one file a day, in the configured zone)."""

from __future__ import annotations

from twisted.internet import task
from zope.interface.verify import verifyObject

from cdrd.interfaces import ICdrSink
from cdrd.outputs.csvfile import CsvFileSink
from tests.outputs.cdrs import E1_LINE, E4_LINES, call_end, cdr, e1, e4


def test_lines_of_a_turn_go_to_the_file_of_their_day(tmp_path):
    clock = task.Clock()
    sink = CsvFileSink(tmp_path / "cdr", clock, "UTC")
    assert verifyObject(ICdrSink, sink) and sink.spool([e1()], 0) == []
    sink.startService()
    sink.committed([e1()])
    sink.committed([e4()])
    path = tmp_path / "cdr" / "cdrs-2026-11-22.csv"
    assert not path.exists()  # one write per turn
    clock.advance(0)
    # the FireBrick line byte for byte, then the creating and the billed call
    rows = [c.csv_row for c in e1().cdrs + e4().cdrs]
    assert [r.rsplit(",", 2)[0] for r in rows] == [E1_LINE, *E4_LINES]
    assert path.read_text() == "\n".join(rows) + "\n"
    sink.committed([e1()])
    sink.stopService()  # flushes
    assert path.read_text().count(E1_LINE) == 2
    assert sink.status()["written"] == 4


def test_the_day_is_the_call_end_in_the_zone(tmp_path):
    clock = task.Clock()
    sink = CsvFileSink(tmp_path, clock, "America/New_York")
    sink.startService()
    late = call_end(90, "03:30:00.000", cdr("c", 1, "03:00:00.000", 0, 1000, "A", "1", "2"))
    sink.committed([late])  # 22:30 on the 21st in New York
    clock.advance(0)
    assert (tmp_path / "cdrs-2026-11-21.csv").read_text().startswith("2026-11-22T03:00:00.000Z,")


def test_an_unwritable_directory_is_logged_and_counted(tmp_path):
    clock = task.Clock()
    sink = CsvFileSink(tmp_path / "f", clock)
    (tmp_path / "f").write_text("not a directory")
    sink.committed([e1()])
    clock.advance(0)
    assert sink.status()["errors"] == 1 and sink.status()["written"] == 0
