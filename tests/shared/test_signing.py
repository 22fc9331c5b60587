from shared import signing


def test_a_signed_body_verifies_and_a_changed_one_does_not() -> None:
    secret = signing.new_secret()
    value = signing.header(secret, b'{"a": 1}', now=1000)[signing.HEADER]
    assert signing.verify(secret, b'{"a": 1}', value, now=1010)
    assert not signing.verify(secret, b'{"a": 2}', value, now=1010)
    assert not signing.verify("whsec_other", b'{"a": 1}', value, now=1010)


def test_an_old_signature_is_refused() -> None:
    value = signing.header("s", b"x", now=1000)[signing.HEADER]
    assert not signing.verify("s", b"x", value, now=1000 + signing.TOLERANCE_S + 1)
    assert not signing.verify("s", b"x", "t=abc,v1=00", now=1000)
