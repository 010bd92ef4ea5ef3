"""Keyed tokens, AES-SIV, per-partner key derivation and key rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac as std_hmac
from pathlib import Path

import pandas as pd
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from anonymize.errors import InputError
from anonymize.policy.schema import Policy, load_policy
from anonymize.pseudonymize import (
    Keys,
    decrypt_series,
    encrypt_series,
    pseudonymize,
    reidentify,
    rotate_tokens,
    tokenize_series,
)

POLICY = Path(__file__).parent / "fixtures" / "anonymize" / "policy.yaml"
MASTER_A = bytes(range(32))
MASTER_B = bytes(range(100, 132))
IDS = pd.Series([f"C{i:06d}" for i in range(200)] + ["C000001", None], dtype=object)


def _policy() -> Policy:
    return load_policy(POLICY)


def test_token_is_hmac_sha256_hex_of_derived_key() -> None:
    key = Keys(MASTER_A).column_key("churn_modeling", "customer_id")
    expected_key = HKDF(hashes.SHA256(), 96, None, b"privmodel/churn_modeling/default/customer_id").derive(MASTER_A)
    assert key.mac == expected_key[:32] and key.siv == expected_key[32:]
    tokens = tokenize_series(IDS, key, 16)
    h = crypto_hmac.HMAC(key.mac, hashes.SHA256())
    h.update(b"C000007")
    assert tokens[7] == h.finalize().hex()[:16]
    assert all(len(t) == 16 and int(t, 16) >= 0 for t in tokens.dropna())
    assert tokens[201] is None  # missing stays missing
    longer = tokenize_series(IDS, key, 17)  # odd lengths: one more hex digit of the same digest
    assert longer[7][:16] == tokens[7] and len(longer[7]) == 17


def test_same_input_same_token_other_key_unrelated_never_a_plain_hash() -> None:
    k1 = Keys(MASTER_A).column_key("p", "customer_id")
    k2 = Keys(MASTER_B).column_key("p", "customer_id")
    t1, t1_again, t2 = tokenize_series(IDS, k1, 64), tokenize_series(IDS, k1, 64), tokenize_series(IDS, k2, 64)
    assert t1.equals(t1_again)
    assert t1[1] == t1[200]  # same value -> same token
    assert t1.dropna().nunique() == 200  # distinct values -> distinct tokens
    assert not (set(t1.dropna()) & set(t2.dropna()))  # another key: no token in common
    plain = {hashlib.sha256(v.encode()).hexdigest() for v in IDS.dropna()}
    assert not (set(t1.dropna()) & plain)
    unkeyed_hmac = {std_hmac.new(b"", v.encode(), "sha256").hexdigest() for v in IDS.dropna()}
    assert not (set(t1.dropna()) & unkeyed_hmac)


def test_numbers_tokenize_by_their_text() -> None:
    key = Keys(MASTER_A).column_key("p", "id")
    assert tokenize_series(pd.Series([12, 12.0, "12"]), key).nunique() == 1


def test_aes_siv_round_trip_deterministic_and_bound_to_column() -> None:
    key = Keys(MASTER_A).column_key("p", "national_id")
    values = pd.Series(["850101-1234", "ÄÖü ☃", None, "850101-1234"], dtype=object)
    cipher = encrypt_series(values, key)
    assert cipher[0] == cipher[3] and cipher[0] != cipher[1] and cipher[2] is None
    assert all("850101" not in c for c in cipher.dropna())
    base64.urlsafe_b64decode(cipher[0] + "==")  # unpadded base64url
    assert reidentify(cipher, key, "national_id").tolist() == values.tolist()
    other_column = Keys(MASTER_A).column_key("p", "other")
    with pytest.raises(InputError, match="key was derived for another column"):
        reidentify(cipher, other_column, "national_id")
    with pytest.raises(InputError, match=r"column 'national_id', row 1: not a ciphertext") as info:
        decrypt_series(cipher, Keys(MASTER_B).column_key("p", "national_id"))
    assert "850101" not in str(info.value)


def test_partners_link_only_with_the_shared_master() -> None:
    ids = IDS.dropna()
    bank = tokenize_series(ids, Keys(MASTER_A, "insurer").column_key("churn", "customer_id"))
    shop_same_master = tokenize_series(ids, Keys(MASTER_A, "insurer").column_key("churn", "customer_id"))
    assert bank.equals(shop_same_master)  # same master, partner and purpose -> same person links
    other_master = tokenize_series(ids, Keys(MASTER_B, "insurer").column_key("churn", "customer_id"))
    other_partner = tokenize_series(ids, Keys(MASTER_A, "retailer").column_key("churn", "customer_id"))
    other_purpose = tokenize_series(ids, Keys(MASTER_A, "insurer").column_key("marketing", "customer_id"))
    for unrelated in (other_master, other_partner, other_purpose):
        assert not (set(bank) & set(unrelated))
    with pytest.raises(InputError, match="partner name"):
        Keys(MASTER_A, "a/b")
    with pytest.raises(InputError, match="at least 32 bytes"):
        Keys(b"short")


def test_keys_never_print() -> None:
    key = Keys(MASTER_A, "insurer")
    column = key.column_key("p", "c")
    for text in (repr(key), str(key), repr(column)):
        assert MASTER_A.hex() not in text and column.mac.hex() not in text and "mac=" not in text


def _raw_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": [f"C{i:04d}" for i in range(30)] + [None],
            "national_id": [f"NID-{i * 7:05d}" for i in range(30)] + ["NID-99999"],
            "full_name": ["Jane Roe"] * 31,
            "age": range(31),
        }
    )


def test_pseudonymize_applies_each_method_and_keeps_escrow() -> None:
    policy = _policy()
    raw = _raw_table()
    out = pseudonymize(raw, policy, Keys(MASTER_A))
    assert "full_name" not in out.data.columns
    assert out.summary["customer_id"] == {
        "method": "token", "values": 30, "missing": 1, "length": 16, "bits": 64, "format": "hex", "escrow": True,
        "distinct": 30, "collisions": 0,
    }
    assert out.summary["national_id"]["method"] == "encrypt"
    assert out.escrow is not None and list(out.escrow.columns) == ["column", "token", "ciphertext"]
    assert len(out.escrow) == 30 and set(out.escrow["token"]) == set(out.data["customer_id"].dropna())
    key = Keys(MASTER_A).column_key("churn_modeling", "national_id")
    assert reidentify(out.data["national_id"], key, "national_id").tolist() == raw["national_id"].tolist()


def test_rotation_equals_tokenizing_raw_with_the_new_key() -> None:
    policy = _policy()
    raw = _raw_table()
    old = pseudonymize(raw, policy, Keys(MASTER_A, "insurer"))
    fresh = pseudonymize(raw, policy, Keys(MASTER_B, "insurer"))
    release = old.data.drop(columns=["age"]).iloc[::-1]  # row order of a release does not matter
    rotated = rotate_tokens(release, Keys(MASTER_A, "insurer"), Keys(MASTER_B, "insurer"), policy, escrow=old.escrow)
    expected = fresh.data.drop(columns=["age"]).iloc[::-1]
    pd.testing.assert_frame_equal(rotated.data, expected)
    assert rotated.rotated == {"customer_id": 30, "national_id": 31}
    assert rotated.escrow is not None
    pd.testing.assert_frame_equal(
        rotated.escrow.sort_values("token").reset_index(drop=True),
        fresh.escrow.sort_values("token").reset_index(drop=True),
    )
    # and it chains: rotating back gives the original release
    back = rotate_tokens(rotated.data, Keys(MASTER_B, "insurer"), Keys(MASTER_A, "insurer"), policy, escrow=rotated.escrow)
    pd.testing.assert_frame_equal(back.data, release)


def test_rotation_refuses_what_it_cannot_do_soundly() -> None:
    policy = _policy()
    raw = _raw_table()
    old = pseudonymize(raw, policy, MASTER_A)
    with pytest.raises(InputError, match="no escrow table was given"):
        rotate_tokens(old.data, MASTER_A, MASTER_B, policy)
    with pytest.raises(InputError, match="escrow does not match its tokens under the old key"):
        rotate_tokens(old.data, MASTER_A, MASTER_B, policy, escrow=old.escrow.assign(token=old.escrow["token"][::-1].to_numpy()))
    other = pseudonymize(raw.assign(customer_id=[f"X{i}" for i in range(31)]), policy, MASTER_A)
    with pytest.raises(InputError, match=r"column 'customer_id', row 1: token has no escrow entry"):
        rotate_tokens(old.data, MASTER_A, MASTER_B, policy, escrow=other.escrow)
    no_escrow = Policy.from_yaml_text(POLICY.read_text().replace(", escrow: true", ""), "p.yaml", POLICY.parent)
    plain = pseudonymize(raw, no_escrow, MASTER_A)
    with pytest.raises(InputError, match="token column without escrow cannot be rotated"):
        rotate_tokens(plain.data, MASTER_A, MASTER_B, no_escrow)


def test_fast_and_general_token_paths_agree() -> None:
    """All-string columns take a vectorized path; one missing value sends the column the general way."""
    from anonymize.pseudonymize import tokenize_series

    key = b"k" * 32
    values = ["Ann", "Bob", "Zoë", " x ", "12"]
    fast = tokenize_series(pd.Series(values), key, 17)
    general = tokenize_series(pd.Series([*values, None]), key, 17)
    assert list(fast) == list(general[:5])
    assert pd.isna(general.iloc[5])
    assert all(len(t) == 17 for t in fast)
    with_nul = tokenize_series(pd.Series(["a\x00b", "c"]), key, 16)  # NUL breaks the joined encoding
    assert list(with_nul) == list(tokenize_series(pd.Series(["a\x00b", "c", None]), key, 16)[:2])


def test_batch_token_path_matches_stdlib_hmac_on_every_column_layout() -> None:
    """The batch path (Arrow buffers, chunks of 4,096) against stdlib `hmac` computed value by value."""
    import hashlib
    import hmac as std_hmac

    import pyarrow as pa

    from anonymize.pseudonymize import tokenize_series

    key = b"\x07" * 32
    values = [f"id-{i}-{'é' * (i % 3)}" for i in range(9000)] + ["", "x" * 200]

    def expected(vals: list[str], length: int) -> list[str]:
        return [std_hmac.new(key, v.encode(), hashlib.sha256).hexdigest()[:length] for v in vals]

    arrow_str = pd.Series(values, dtype="str")
    layouts = {
        "object": pd.Series(values, dtype=object),
        "str (Arrow)": arrow_str,
        "sliced str": arrow_str.iloc[4100:],
        "two chunks": pd.concat([arrow_str.iloc[:5000], arrow_str.iloc[5000:]], ignore_index=True),
        "large_string": pd.Series(pd.array(values, dtype=pd.ArrowDtype(pa.large_string()))),
        "list": values,
    }
    for name, column in layouts.items():
        for length in (16, 17):
            got = tokenize_series(column, key, length)
            vals = list(column)
            assert list(got) == expected(vals, length), name
            if isinstance(column, pd.Series):
                assert got.index.equals(column.index), name


def test_rotation_refuses_a_collision_under_the_new_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rotation must not merge two customers either (issue 10, finding 7)."""
    import anonymize.pseudonymize as module

    policy = _policy()
    old = pseudonymize(_raw_table(), policy, Keys(MASTER_A, "insurer"))
    new_mac = Keys(MASTER_B, "insurer").column_key(policy.purpose.name, "customer_id").mac
    real = module.tokenize_series

    def colliding(series, key, length=16):
        tokens = real(series, key, length).astype(object)
        if getattr(key, "mac", None) == new_mac:
            tokens.iloc[1] = tokens.iloc[0]
        return tokens

    monkeypatch.setattr(module, "tokenize_series", colliding)
    with pytest.raises(InputError) as info:
        rotate_tokens(old.data, Keys(MASTER_A, "insurer"), Keys(MASTER_B, "insurer"), policy, escrow=old.escrow)
    assert str(info.value) == (
        "column 'customer_id': under the new key 1 token(s) would stand for two different identifiers "
        "(64-bit tokens); rotation not written"
    )
