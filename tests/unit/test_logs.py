from backtest_sandbox.sandbox.logs import cap_logs


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
