"""Transcript scoring."""

from shared.textnorm import cer, normalize, wer


def test_normalize() -> None:
    assert normalize("Ask not, what YOUR country...") == "ask not what your country"
    assert normalize("one zero oh") == normalize("1 0 0") == normalize("100")


def test_wer_cer() -> None:
    assert wer("the cat sat", "The cat sat.") == 0
    assert abs(wer("the cat sat down", "the dog sat") - 0.5) < 1e-9
    assert cer("广州市房地产", "广州市房地") == 1 / 6

