"""Stop sequences over streamed text pieces."""

from inference.runtime.stops import StopMatcher


def feed_all(matcher: StopMatcher, pieces: list[str]) -> tuple[str, bool]:
    released = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        released.append(text)
        if stopped:
            return "".join(released), True
    return "".join(released) + matcher.flush(), False


def test_stop_split_across_pieces_is_found_and_not_sent() -> None:
    assert feed_all(StopMatcher(("END",)), ["Hello E", "N", "D tail"]) == ("Hello ", True)


def test_text_that_only_looked_like_a_stop_is_released() -> None:
    matcher = StopMatcher(("END",))
    assert matcher.feed("Hello EN") == ("Hello ", False)
    assert matcher.feed("Ough") == ("ENOugh", False)


def test_earliest_of_several_stops_wins() -> None:
    assert feed_all(StopMatcher(("c", "ab")), ["xxabc"]) == ("xx", True)


def test_held_back_text_is_flushed_at_the_end() -> None:
    assert feed_all(StopMatcher(("STOP",)), ["one ST"]) == ("one ST", False)


def test_without_stops_everything_passes_through() -> None:
    matcher = StopMatcher(())
    assert matcher.feed("abc") == ("abc", False)
