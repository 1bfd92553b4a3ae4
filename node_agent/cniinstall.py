"""Installing the weft-cni plugin (node_agent/cniplugin.py) on a Kubernetes node, as Istio's
install-cni container does: the plugin file goes to the node's CNI bin folder as `weft-cni`,
and a `{"type": "weft-cni", ...}` entry is appended to the primary network's plugin chain.

Which file is the primary network: the runtime's rule. containerd (go-cni `loadFromConfDir`,
used by its CRI plugin with `WithDefaultConf`) lists `*.conf`, `*.conflist` and `*.json` in the
conf dir, sorts the names, and takes the first as the default network (a file that does not
parse is an error). CRI-O (ocicni `loadNetworks`) lists and sorts the same way and takes the
first one that loads and validates, skipping the others; validation includes every plugin
binary being in the bin dir, so the binary is copied before the chain names it and the chain
is mended before the binary is removed. A `.conf`/`.json` holds one plugin; it is turned into a
list (as libcni's `ConfListFromConf` does), written as `<stem>.conflist` and the original is
removed, because `10-x.conf` sorts before `10-x.conflist` and would stay the primary.

The pure part (`primary_conf`, `chain`, `unchain`) works on names and JSON text; `Installer`
does the file I/O (atomic: a temp file in the same folder, then rename) one pass at a time, and
`watch` repeats passes so that a CNI daemon rewriting its conflist is chained again.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from node_agent import cniplugin

log = structlog.get_logger("node_agent.cniinstall")

PLUGIN_TYPE = "weft-cni"
BINARY_NAME = "weft-cni"
SHEBANG = "#!/usr/bin/env python3\n"
CONF_EXTENSIONS = (".conf", ".conflist", ".json")  # go-cni's and ocicni's
MAX_CONF_BYTES = 1024 * 1024  # a conflist is a few hundred bytes; past this, refused
MAX_CONF_FILES = 256  # names looked at in the conf dir per pass
TMP_SUFFIX = ".weft-tmp"  # not a conf extension: the runtime never reads a half-written file


class CniConfigError(ValueError):
    """A CNI network configuration weft will not touch; the message names the file."""


@dataclass(frozen=True)
class WeftEntry:
    """The weft-cni plugin's configuration in the chain (read by cniplugin.run)."""

    agent_socket: str = cniplugin.DEFAULT_SOCKET
    exclude_namespaces: tuple[str, ...] = cniplugin.DEFAULT_EXCLUDED
    timeout_seconds: float = 10

    def __post_init__(self) -> None:
        if not os.path.isabs(self.agent_socket):
            raise ValueError(f"agent socket {self.agent_socket!r}: an absolute path on the node")
        if not 0 < self.timeout_seconds <= 120:  # the plugin's own bound
            raise ValueError(f"timeout_seconds {self.timeout_seconds}: in (0, 120]")

    def as_plugin(self) -> dict[str, Any]:
        timeout = self.timeout_seconds
        return {
            "type": PLUGIN_TYPE,
            "agent_socket": self.agent_socket,
            "exclude_namespaces": list(self.exclude_namespaces),
            "timeout_seconds": int(timeout) if float(timeout).is_integer() else timeout,
        }


# --- pure -------------------------------------------------------------------------------


def is_conf_name(name: str) -> bool:
    return name.endswith(CONF_EXTENSIONS) and not name.startswith(".")


def primary_conf(names: Iterable[str]) -> str | None:
    """The file the runtime takes as the default network: the lexically first conf name."""
    confs = sorted(n for n in names if is_conf_name(n))
    return confs[0] if confs else None


def conflist_name(name: str) -> str:
    """Where a file's chain is written: a `.conf`/`.json` becomes `<stem>.conflist`."""
    return name if name.endswith(".conflist") else name.rsplit(".", 1)[0] + ".conflist"


def parse_conflist(text: str, name: str) -> dict[str, Any]:
    """The file's network as a conflist (a single-plugin `.conf`/`.json` converted), checked."""
    try:
        data = json.loads(text)
    except ValueError as err:
        raise CniConfigError(f"{name}: not JSON ({err})") from None
    if not isinstance(data, dict):
        raise CniConfigError(f"{name}: not a JSON object")
    if not name.endswith(".conflist"):
        if "plugins" in data:
            raise CniConfigError(f"{name}: a plugin list in a single-plugin file (.conflist?)")
        if not isinstance(data.get("type"), str) or not data["type"]:
            raise CniConfigError(f"{name}: no plugin `type`")
        single = {k: v for k, v in data.items() if k not in ("cniVersion", "name")}
        data = {"cniVersion": data.get("cniVersion"), "name": data.get("name"), "plugins": [single]}
    plugins = data.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise CniConfigError(f"{name}: no `plugins` list (or an empty one)")
    for i, plugin in enumerate(plugins):
        if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str):
            raise CniConfigError(f"{name}: plugins[{i}] is not an object with a `type`")
    version = data.get("cniVersion")
    if version not in cniplugin.SUPPORTED:
        raise CniConfigError(
            f"{name}: cniVersion {version!r} is not one weft-cni supports "
            f"({', '.join(cniplugin.SUPPORTED)})"
        )
    return data


def _dump(conflist: dict[str, Any]) -> str:
    return json.dumps(conflist, indent=2) + "\n"


def chain(text: str, name: str, entry: WeftEntry) -> str:
    """The conflist with weft-cni as its last plugin (any earlier weft-cni entry replaced)."""
    conflist = parse_conflist(text, name)
    others = [p for p in conflist["plugins"] if p.get("type") != PLUGIN_TYPE]
    return _dump({**conflist, "plugins": [*others, entry.as_plugin()]})


def unchain(text: str, name: str) -> str:
    """The conflist without weft-cni. Refused if nothing would be left (not ours to empty)."""
    conflist = parse_conflist(text, name)
    others = [p for p in conflist["plugins"] if p.get("type") != PLUGIN_TYPE]
    if not others:
        raise CniConfigError(f"{name}: weft-cni is its only plugin; left as it is")
    return _dump({**conflist, "plugins": others})


def is_chained(text: str, name: str, entry: WeftEntry) -> bool:
    """Whether the file already ends with exactly this entry (nothing to write)."""
    conflist = parse_conflist(text, name)
    plugins = conflist["plugins"]
    ours = [p for p in plugins if p.get("type") == PLUGIN_TYPE]
    return name.endswith(".conflist") and ours == [entry.as_plugin()] and plugins[-1] == ours[0]


def plugin_file() -> str:
    """The weft-cni executable: cniplugin.py (standard library only) run by the host's python3."""
    return SHEBANG + Path(cniplugin.__file__).read_text()


def host_python(bin_dirs: Sequence[Path]) -> Path | None:
    """A `python3` in the host's bin folders (mounted into this container), or None. Only the
    entry is looked for: an absolute symlink points into the host's root, not ours."""
    for folder in bin_dirs:
        candidate = folder / "python3"
        if os.path.lexists(candidate):
            return candidate
    return None


# --- I/O --------------------------------------------------------------------------------


def write_atomic(path: Path, data: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # past the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_conf(path: Path) -> str:
    with open(path, "rb") as f:
        raw = f.read(MAX_CONF_BYTES + 1)
    if len(raw) > MAX_CONF_BYTES:
        raise CniConfigError(f"{path}: over {MAX_CONF_BYTES} bytes")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise CniConfigError(f"{path}: not UTF-8") from None


@dataclass
class Installer:
    """One node's installation: `sync` makes it so (idempotent), `uninstall` undoes it."""

    conf_dir: Path
    bin_dir: Path
    entry: WeftEntry = WeftEntry()
    chained: Path | None = None  # the conflist carrying our entry after the last sync
    _refused: str = field(default="", repr=False)  # the last problem, logged once

    @property
    def binary(self) -> Path:
        return self.bin_dir / BINARY_NAME

    def _conf_names(self) -> list[str]:
        names = []
        with os.scandir(self.conf_dir) as entries:
            for e in entries:
                if is_conf_name(e.name) and e.is_file():
                    names.append(e.name)
                    if len(names) >= MAX_CONF_FILES:
                        break
        return sorted(names)

    def install_binary(self) -> bool:
        content = plugin_file()
        try:
            if self.binary.read_text() == content and os.access(self.binary, os.X_OK):
                return False
        except (FileNotFoundError, UnicodeDecodeError):
            pass
        write_atomic(self.binary, content, 0o755)
        log.info("cni.binary_installed", path=str(self.binary))
        return True

    def sync(self) -> Path | None:
        """One pass: the binary in place, the primary conflist chained, our entry gone from any
        other conflist. The conflist chained, or None while there is none (or it is refused)."""
        self.install_binary()
        names = self._conf_names()
        primary = primary_conf(names)
        if primary is None:
            if self._refused != "waiting":
                log.info("cni.waiting_for_primary", conf_dir=str(self.conf_dir))
                self._refused = "waiting"
            self.chained = None
            return None
        for name in names:
            if name != primary and name.endswith(".conflist"):
                self._unchain_file(self.conf_dir / name)
        source = self.conf_dir / primary
        try:
            text = _read_conf(source)
            done = is_chained(text, str(source), self.entry)
            new = "" if done else chain(text, str(source), self.entry)
        except (CniConfigError, OSError) as err:
            if str(err) != self._refused:
                log.error("cni.conflist_refused", path=str(source), error=str(err))
                self._refused = str(err)
            self.chained = None
            return None
        self._refused = ""
        target = self.conf_dir / conflist_name(primary)
        if not done:
            mode = source.stat().st_mode & 0o777
            write_atomic(target, new, mode)
            if target != source:
                source.unlink(missing_ok=True)
            log.info(
                "cni.chained",
                path=str(target),
                converted_from=str(source) if target != source else None,
                again=self.chained == target,  # a CNI daemon rewrote it since our last pass
            )
        self.chained = target
        return target

    def _unchain_file(self, path: Path) -> bool:
        try:
            text = _read_conf(path)
            if PLUGIN_TYPE not in text:
                return False
            new = unchain(text, str(path))
            if json.loads(new) == json.loads(text):
                return False
            write_atomic(path, new, path.stat().st_mode & 0o777)
        except FileNotFoundError:
            return False
        except (CniConfigError, OSError) as err:
            log.error("cni.unchain_failed", path=str(path), error=str(err))
            return False
        log.info("cni.unchained", path=str(path))
        return True

    def uninstall(self, remove_binary: bool = True) -> None:
        """Our entry out of every conflist, then (with `remove_binary`) the binary: CRI-O
        skips a chain naming a missing binary, so the order matters."""
        for name in self._conf_names():
            if name.endswith(".conflist"):
                self._unchain_file(self.conf_dir / name)
        self.chained = None
        if not remove_binary:
            log.info("cni.binary_kept", path=str(self.binary))
            return
        try:
            self.binary.unlink()
            log.info("cni.binary_removed", path=str(self.binary))
        except FileNotFoundError:
            pass


def watch(
    installer: Installer,
    stop: threading.Event,
    interval: float = 2.0,
    remove_binary: bool = False,
) -> None:
    """Sync every `interval` seconds until `stop` is set, then uninstall: the entry always,
    the binary only with `remove_binary`. Kept by default because pods created while it was
    chained are torn down (CNI DEL) with the config cached at their ADD, which names it:
    without the binary their DEL fails and containerd retries it forever (Istio learned this,
    istio/istio#58572); the file left on the node does nothing once unchained. A CNI daemon that
    rewrites its conflist (Flannel, Calico, Cilium do at start) is chained again within one
    interval. Polling, not inotify: one small file read per interval, and it sees a file
    replaced by rename (how CNI daemons write) without re-arming watches."""
    try:
        while True:
            try:
                installer.sync()
            except OSError as err:  # a folder gone or read-only for a moment: try again
                log.error("cni.sync_failed", error=str(err))
            if stop.wait(interval):
                break
    finally:
        installer.uninstall(remove_binary)
        log.info("cni.install_stopped")
