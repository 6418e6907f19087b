"""A key per purpose derived from NUDGE_SECRET_KEY (nudge/keys.py), the link codec's key ring
(nudge/mail/links.py): rotation, legacy links, and no token crossing purposes."""

from __future__ import annotations

import itertools

import pytest

from nudge import keys
from nudge.keys import Keyring
from nudge.mail import links, tracking
from nudge.settings import Settings

OLD = "an-old-secret-that-signed-mails-sent-last-year"
NEW = "a-new-secret-made-with-secrets.token_urlsafe-32"
LINK_PURPOSES = (links.UNSUBSCRIBE, links.CONFIRM, links.OPEN, links.CLICK)

# Made by the codec before keys were derived (issue-13's nudge/mail/links.py, MAC under the raw
# secret), as they sit in emails already sent: they must keep working.
LEGACY_UNSUBSCRIBE = "NDIfbXNnLTE.kJYF3qd1HKqamzEU5FGm00hk9ZmF0lmSmdmhWJ2vC68"
LEGACY_CLICK = (
    "NDIfbXNnLTEfaHR0cHM6Ly9zaG9wLmV4YW1wbGUvcC8x.Z2-FtrfBeNpHKUJdOjjhvMI3ud8jNBmJOHteZWcM6ms"
)


def claims() -> links.TokenClaims:
    return links.TokenClaims(42, "msg-1")


def test_each_purpose_has_its_own_key_and_none_is_the_secret() -> None:
    derived = {purpose: keys.derive(NEW, purpose) for purpose in keys.PURPOSES}
    assert len(set(derived.values())) == len(keys.PURPOSES)
    assert all(len(key) == 32 and key != NEW.encode() for key in derived.values())
    # Another secret, other keys; the same secret, the same keys (links outlive processes).
    assert keys.derive(OLD, links.UNSUBSCRIBE) != derived[links.UNSUBSCRIBE]
    assert keys.derive(NEW, links.UNSUBSCRIBE) == derived[links.UNSUBSCRIBE]
    with pytest.raises(ValueError, match="no key purpose 'webhook'"):
        keys.derive(NEW, "webhook")


@pytest.mark.parametrize("ring", [Keyring(NEW), Keyring(NEW, OLD)], ids=["one", "rotating"])
def test_a_token_of_one_purpose_never_verifies_as_another(ring: Keyring) -> None:
    for made, asked in itertools.permutations(LINK_PURPOSES, 2):
        token = links.sign(ring, made, claims())
        assert links.verify(ring, made, token) == claims()
        with pytest.raises(links.InvalidToken):
            links.verify(ring, asked, token)
    # Nor a legacy token (raw-secret MAC) of another purpose.
    with pytest.raises(links.InvalidToken):
        links.verify(Keyring(OLD), links.CONFIRM, LEGACY_UNSUBSCRIBE)


def test_new_tokens_use_the_new_key_and_the_previous_key_still_verifies() -> None:
    before = Keyring(OLD)
    sent_last_month = links.sign(before, links.UNSUBSCRIBE, claims())
    rotating = Keyring(NEW, previous=OLD)
    assert links.verify(rotating, links.UNSUBSCRIBE, sent_last_month) == claims()
    fresh = links.sign(rotating, links.UNSUBSCRIBE, claims())
    assert fresh != sent_last_month
    assert links.verify(Keyring(NEW), links.UNSUBSCRIBE, fresh) == claims()
    with pytest.raises(links.InvalidToken):  # not signed with the previous key
        links.verify(before, links.UNSUBSCRIBE, fresh)
    # Once the previous key is dropped, its tokens are refused.
    with pytest.raises(links.InvalidToken):
        links.verify(Keyring(NEW), links.UNSUBSCRIBE, sent_last_month)


def test_links_sent_before_keys_were_derived_keep_working() -> None:
    assert links.verify(Keyring(OLD), links.UNSUBSCRIBE, LEGACY_UNSUBSCRIBE) == claims()
    click = tracking.verify_click(Keyring(OLD), LEGACY_CLICK)
    assert (click.contact_id, click.url) == (42, "https://shop.example/p/1")
    # ... through a rotation too, as the previous key's legacy form.
    assert links.verify(Keyring(NEW, OLD), links.UNSUBSCRIBE, LEGACY_UNSUBSCRIBE) == claims()
    with pytest.raises(links.InvalidToken):
        links.verify(Keyring(NEW), links.UNSUBSCRIBE, LEGACY_UNSUBSCRIBE)
    # New tokens are never the legacy form: the same claims, another MAC.
    assert links.sign(Keyring(OLD), links.UNSUBSCRIBE, claims()) != LEGACY_UNSUBSCRIBE


def test_the_settings_rotation_reaches_the_links_in_emails() -> None:
    old = Settings(secret_key=OLD, public_url="https://shop.example")
    url = links.unsubscribe_url(old, 42, "msg-1")
    rotated = Settings(secret_key=NEW, secret_key_previous=OLD, public_url="https://shop.example")
    token = url.rsplit("/", 1)[1]
    assert links.verify(keys.keyring(rotated), links.UNSUBSCRIBE, token) == claims()
    assert links.unsubscribe_url(rotated, 42, "msg-1") != url
    assert keys.keyring(Settings(secret_key=NEW, secret_key_previous="")).previous is None
