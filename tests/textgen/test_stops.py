from __future__ import annotations

import pytest

from llmgateway.textgen.stops import StopMatcher


def run(stops, chunks):
    matcher = StopMatcher(stops)
    out = [matcher.push(c) for c in chunks]
    out.append(matcher.flush())
    return out, matcher.matched


def test_stop_split_across_chunks_never_leaks():
    out, matched = run(["END"], ["abc E", "N", "D tail"])
    assert matched == "END"
    assert "".join(out) == "abc "
    assert all("E" not in piece for piece in out)


def test_partial_match_that_fails_is_emitted_in_full():
    out, matched = run(["END"], ["ab EN", "X more"])
    assert matched is None
    assert "".join(out) == "ab ENX more"


def test_held_prefix_released_at_the_end():
    out, matched = run(["END"], ["tail E"])
    assert matched is None
    assert out[0] == "tail "
    assert "".join(out) == "tail E"


@pytest.mark.parametrize("chunks", [["x\n\ny"], ["x", "\n", "\n", "y"]])
def test_earliest_of_several_stops_wins(chunks):
    out, matched = run(["\n\n", "y"], chunks)
    assert matched == "\n\n"
    assert "".join(out) == "x"


def test_no_stops_passes_through():
    out, matched = run([], ["a", "b"])
    assert "".join(out) == "ab"
    assert matched is None
