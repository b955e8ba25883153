"""The vault on real files."""

from primary.store.vault import Vault, new_key


def test_values_read_are_copies_and_changes_go_through_set(tmp_path):
    key = new_key()
    vault = Vault.create(tmp_path / "vault.bin", key, {"nested": {"a": "1"}})
    got = vault.get("nested")
    got["a"] = "changed behind its back"
    assert vault.get("nested") == {"a": "1"}
    assert Vault.open(tmp_path / "vault.bin", key).get("nested") == {"a": "1"}
    vault.set("nested", {"a": "2"})
    assert Vault.open(tmp_path / "vault.bin", key).get("nested") == {"a": "2"}
