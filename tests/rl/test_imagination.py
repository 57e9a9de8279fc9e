"""Pieces of the imagination loop that need no services."""

from wmpo.rl.imagination import done_chunk


def test_chunks_after_the_judged_success_are_outside_the_episode():
    # 4 frames per chunk: chunk 0 makes frames 1-4, chunk 1 frames 5-8, ...
    assert done_chunk(None, 4, 6) == 6  # no success: every chunk counts
    assert done_chunk(4, 4, 6) == 1
    assert done_chunk(5, 4, 6) == 2
    assert done_chunk(8, 4, 6) == 2
    assert done_chunk(0, 4, 6) == 1  # success visible at the start: the first chunk still counts
    assert done_chunk(100, 4, 6) == 6
