"""weft's API groups that mirror Istio's (`security.weft.dev` for `security.istio.io`,
`networking.weft.dev` for `networking.istio.io`): the same kinds, fields and meaning, so an
Istio resource ports by changing its apiVersion. A resource written in Istio's group is let
through to its parser, which refuses it saying what to change."""

from __future__ import annotations

from meshcore.resources.fields import Fields


class MirroredGroup:
    """One weft group mirroring one of Istio's: the apiVersions a kind is served as, and
    the refusal of Istio's own group."""

    def __init__(self, group: str, istio_group: str, versions: tuple[str, ...] = ("v1",)):
        self.group = group
        self.istio_group = istio_group
        self.ours = frozenset(f"{group}/{v}" for v in versions)
        self.versions: frozenset[str] = _ServedVersions(self.ours, istio_group)

    def check(self, f: Fields, kind: str) -> None:
        """Refuse Istio's group, naming the apiVersion to write instead."""
        api_version = f.raw("apiVersion")
        if isinstance(api_version, str) and api_version.startswith(f"{self.istio_group}/"):
            ours = f"{self.group}/{api_version.partition('/')[2]}"
            if ours not in self.ours:
                ours = f"{self.group}/v1"
            raise f.fail(
                "apiVersion",
                f"weft serves {kind} in group {self.group}, not {self.istio_group}: change "
                f"apiVersion to {ours} (the fields and their meaning are Istio's)",
            )


class _ServedVersions(frozenset[str]):
    """Our versions, plus anything in Istio's group (let through to be refused with a
    reason); listing the set names only ours."""

    istio_group: str

    def __new__(cls, ours: frozenset[str], istio_group: str) -> _ServedVersions:
        served = super().__new__(cls, ours)
        served.istio_group = istio_group
        return served

    def __contains__(self, item: object) -> bool:
        return super().__contains__(item) or (
            isinstance(item, str) and item.startswith(f"{self.istio_group}/")
        )


SECURITY = MirroredGroup("security.weft.dev", "security.istio.io", ("v1", "v1beta1"))
NETWORKING = MirroredGroup("networking.weft.dev", "networking.istio.io", ("v1", "v1beta1"))
