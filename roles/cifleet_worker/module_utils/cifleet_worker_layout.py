"""The agent's footprint on a host: its system user and group, its folders and its small
files (the fleet CA certificate, the systemd unit), each with owner, group and mode.

`plan(spec)` says what would change and changes nothing (the role's probe reports it
before any change); `apply(spec)` makes it so and says what it changed. Both take the same
spec, so one module execution does what a group, user, file and copy task per item would
(each of those costs a round trip to every host).

spec = {
    "user": {"name": "cifleet", "group": "cifleet", "home": "/var/lib/cifleet"} or None,
    "dirs": [{"path": ..., "owner": ..., "group": ..., "mode": "0755"}, ...],
    "files": [{"path": ..., "content": ..., "owner": ..., "group": ..., "mode": "0644"}, ...],
}
"""

import grp
import os
import pwd
import stat
import subprocess
import tempfile


def plan(spec):
    """What apply(spec) would change, as one line per item; nothing is changed."""
    changes = []
    user = spec.get("user")
    if user:
        if not _exists(grp.getgrnam, user["group"]):
            changes.append(f"group {user['group']}")
        if not _exists(pwd.getpwnam, user["name"]):
            changes.append(f"user {user['name']}")
    for item in spec.get("dirs", []):
        changes += [f"{item['path']}: {why}" for why in _differences(item, True)]
    for item in spec.get("files", []):
        changes += [f"{item['path']}: {why}" for why in _differences(item, False)]
    return changes


def apply(spec):
    """Make the host match spec; one line per change made."""
    changes = []
    user = spec.get("user")
    if user:
        if not _exists(grp.getgrnam, user["group"]):
            _run(["groupadd", "--system", user["group"]])
            changes.append(f"group {user['group']}")
        if not _exists(pwd.getpwnam, user["name"]):
            _run(
                [
                    "useradd",
                    "--system",
                    "--gid",
                    user["group"],
                    "--home-dir",
                    user["home"],
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    user["name"],
                ]
            )
            changes.append(f"user {user['name']}")
    for item in spec.get("dirs", []):
        why = _differences(item, True)
        if why:
            if "missing" in why:
                os.makedirs(item["path"], exist_ok=True)
            _set_owner_mode(item)
            changes += [f"{item['path']}: {w}" for w in why]
    for item in spec.get("files", []):
        why = _differences(item, False)
        if why:
            _write(item)
            changes += [f"{item['path']}: {w}" for w in why]
    return changes


def _differences(item, is_dir):
    try:
        st = os.lstat(item["path"])
    except FileNotFoundError:
        return ["missing"]
    kind_ok = stat.S_ISDIR(st.st_mode) if is_dir else stat.S_ISREG(st.st_mode)
    if not kind_ok:
        return ["not a " + ("folder" if is_dir else "file")]
    why = []
    if not is_dir:
        with open(item["path"], "rb") as f:
            if f.read() != item["content"].encode("utf-8"):
                why.append("content")
    try:
        owner_ok = st.st_uid == _uid(item["owner"]) and st.st_gid == _gid(item["group"])
    except KeyError:  # the user or group is made by apply(), before the folders
        owner_ok = False
    if not owner_ok:
        why.append("owner")
    if stat.S_IMODE(st.st_mode) != int(item["mode"], 8):
        why.append("mode")
    return why


def _write(item):
    """Replace the file atomically: a reader sees the old content or the new, never half."""
    folder = os.path.dirname(item["path"])
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".cifleet-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(item["content"].encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        _set_owner_mode(dict(item, path=tmp))
        os.replace(tmp, item["path"])
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _set_owner_mode(item):
    os.chown(item["path"], _uid(item["owner"]), _gid(item["group"]))
    os.chmod(item["path"], int(item["mode"], 8))


def _uid(name):
    return pwd.getpwnam(name).pw_uid if not str(name).isdigit() else int(name)


def _gid(name):
    return grp.getgrnam(name).gr_gid if not str(name).isdigit() else int(name)


def _exists(lookup, name):
    try:
        lookup(name)
        return True
    except KeyError:
        return False


def _run(argv):
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise OSError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
