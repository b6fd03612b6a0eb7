"""Networks, VTEPs and Geneve options (``overlay.h``, "networks"; ``network.c``)."""

from __future__ import annotations

import errno

from overlay.bindings._ffi import Handle, IPAddress, addr_bytes, check, lib
from overlay.errors import ConfigError, ConflictError

__all__ = ["ENCAP_GENEVE", "ENCAP_NAMES", "ENCAP_VXLAN", "NetworkArea"]

ENCAP_VXLAN: int = lib.OVL_ENCAP_VXLAN
ENCAP_GENEVE: int = lib.OVL_ENCAP_GENEVE
ENCAP_NAMES = {ENCAP_VXLAN: "VXLAN", ENCAP_GENEVE: "Geneve"}


class NetworkArea(Handle):
    """The engine's networks (mixed into ``Engine``)."""

    encap: int  # the engine's (engine.py)

    def network_add(
        self, vni: int, learning: bool = False, encap: int | None = None, tunnel: bool = True
    ) -> None:
        """Add network ``vni``; ``encap`` (ENCAP_*) defaults to the engine's. VXLAN
        and Geneve networks live side by side: the first tunnel network of the
        other encapsulation opens its tunnel port (``tunnel_port``).
        ``tunnel=False`` (OVL_NET_NO_TUNNEL): frames leave unencapsulated, up to the
        underlay MTU plus the Ethernet header; the network takes no VTEPs."""
        flags = lib.OVL_NET_LEARNING if learning else 0
        if not tunnel:
            flags |= lib.OVL_NET_NO_TUNNEL
        if encap is not None and encap not in ENCAP_NAMES:
            raise ConfigError("encap", encap, "ENCAP_VXLAN or ENCAP_GENEVE")
        rc = lib.ovl_network_add(self._h(), vni, encap or 0, flags)
        if rc == -errno.EADDRINUSE:
            name = ENCAP_NAMES[encap or self.encap]
            port = lib.ovl_engine_tunnel_port(self._h(), encap or self.encap)
            raise ConflictError(
                f"the {name} tunnel port {port} is in use (by another program, or it is "
                f"the port of the other encapsulation): choose another one for {name} "
                "(the engine's alt_port, or udp_port)"
            )
        check(rc, f"adding network vni={vni}")

    def network_del(self, vni: int) -> None:
        check(lib.ovl_network_del(self._h(), vni), f"removing network vni={vni}")

    def network_set_options(self, vni: int, tlv: bytes) -> None:
        check(
            lib.ovl_network_set_options(self._h(), vni, tlv, len(tlv)),
            f"setting Geneve options of vni={vni}",
        )

    def known_option_add(self, cls: int, type_: int) -> None:
        check(
            lib.ovl_network_known_option_add(self._h(), cls, type_ & 0x7F),
            f"declaring Geneve option class={cls:#x} type={type_:#x}",
        )

    def vtep_add(self, vni: int, addr: IPAddress, port: int = 0) -> None:
        family, raw = addr_bytes(addr)
        rc = lib.ovl_network_vtep_add(self._h(), vni, family, raw, port)
        if rc == -errno.EOPNOTSUPP:
            raise ConfigError(
                "vtep", str(addr), f"none: vni={vni} has no tunnel (a routed or underlay network)"
            )
        check(rc, f"adding VTEP {addr} to vni={vni}")

    def vtep_del(self, vni: int, addr: IPAddress) -> None:
        family, raw = addr_bytes(addr)
        check(
            lib.ovl_network_vtep_del(self._h(), vni, family, raw),
            f"removing VTEP {addr} from vni={vni}",
        )
