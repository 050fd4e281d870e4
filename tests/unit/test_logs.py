from backtest_sandbox.sandbox.logs import HeadTail, cap_logs


def test_small_logs_pass_unchanged():
    assert cap_logs(b"hello\n", 100) == ("hello\n", False)


def test_flood_keeps_head_and_tail_within_the_cap():
    text, cut = cap_logs(b"H" * 1000 + b"T" * 1000, 100)
    assert cut
    assert text.startswith("H" * 50) and text.endswith("T" * 50)
    assert "[... 1900 bytes cut ...]" in text


def test_invalid_utf8_and_nul_bytes_become_safe_text():
    text, _ = cap_logs(b"a\x00b\xffc", 100)
    assert text == "ab\ufffdc"


def test_a_stream_keeps_its_head_and_tail_in_bounded_memory():
    kept = HeadTail(100)
    kept.add(b"start " * 5)
    for n in range(100_000):
        kept.add(b"line %d\n" % n)
    kept.add(b"x" * 10_000 + b" the end")  # a giant last line: only its end stays
    assert sum(len(chunk) for chunk in kept.tail) <= 100
    text, cut = kept.text()
    assert cut
    assert text.startswith("start start start start start line 0\nline 1\nline 2\n[... ")
    assert text.endswith("x" * 42 + " the end")
    assert "bytes cut ...]" in text


def test_a_short_stream_is_kept_whole():
    kept = HeadTail(100)
    for chunk in (b"a" * 30, b"b" * 30, b"c" * 40):
        kept.add(chunk)
    assert kept.text() == ("a" * 30 + "b" * 30 + "c" * 40, False)
