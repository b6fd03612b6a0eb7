/*
 * overlay.h — the product ABI of overlay's data plane.
 *
 * cffi reads this file unchanged (ffi.cdef), so it holds only what cdef
 * understands: integer #defines, typedefs, structs and prototypes. No
 * #include and no include guard: C files include it through "ovl.h", which
 * brings the standard headers first. Entry points used only by tests and
 * benchmarks (the traffic generator, the batch codecs, the fake transport)
 * live in overlay_tools.h, fed to cffi after this file.
 *
 * Sections follow the rooms of native/, in the order a packet meets them:
 * constants, counters (counters.c), wire formats (wire.c), the checksum
 * (csum.c), the engine's life cycle (engine.c), networks and VTEPs
 * (network.c), ports (port.c), the FDB and neighbours (fdb.c), counter
 * readers (counters.c) and events (events.c). A symbol's prefix names its
 * room: ovl_<room>_<verb>.
 *
 * Conventions. Functions return 0 (or a length, or an id) on success and a
 * negative errno on failure; wire decoders return the negative id of a drop
 * reason from counters.def. Addresses are 16 bytes with a family of 4 or 6;
 * an IPv4 address sits in the first 4 bytes. MACs are 6 bytes.
 */

/* ---- constants ---- */
#define OVL_ENCAP_VXLAN 1
#define OVL_ENCAP_GENEVE 2

#define OVL_VXLAN_PORT 4789
#define OVL_GENEVE_PORT 6081
#define OVL_VXLAN_HLEN 8
#define OVL_GENEVE_HLEN 8
#define OVL_GENEVE_OPTS_MAX 252
#define OVL_VNI_MAX 16777215

/* Geneve flags as they sit in ovl_tunnel_t.flags */
#define OVL_GENEVE_F_OAM 128
#define OVL_GENEVE_F_CRITICAL 64
/* the critical bit of a Geneve option type */
#define OVL_GENEVE_TYPE_CRITICAL 128
#define OVL_ETH_P_TEB 25944

/* The most worker threads an engine runs (one TAP queue each). */
#define OVL_MAX_WORKERS 16

/* Bytes reserved in front of every frame buffer for the tunnel header, so
 * encapsulation writes in place: 8 bytes of Geneve + 252 of options, rounded. */
#define OVL_HEADROOM 320

/* ovl_frame_t.l3 */
#define OVL_L3_NONE 0
#define OVL_L3_ARP 1
#define OVL_L3_IPV4 2
#define OVL_L3_IPV6 3

/* port flags */
#define OVL_PORT_NO_SECURITY 1
#define OVL_PORT_PERSIST 2
#define OVL_PORT_ROUTER 4        /* may send router advertisements and redirects */
#define OVL_PORT_GATEWAY 8       /* the node's IP stack: a router (as OVL_PORT_ROUTER) that
                                  * also forwards for addresses outside the network: any
                                  * source address no endpoint of the network holds, and
                                  * ARP replies (proxy ARP) for such addresses */
#define OVL_PORT_UPLINK 16       /* ovl_port_add_fd only: a packet socket on the node's
                                  * physical interface (an underlay network's way onto
                                  * the segment), with PACKET_VNET_HDR: its frames carry
                                  * a virtio-net header. Implies no port security (it
                                  * speaks for every station of the segment, learned
                                  * behind it); a unicast frame from it to a MAC that is
                                  * no other port's is another station's and is ignored
                                  * (uplink_foreign): never flooded, never a miss */
#define OVL_PORT_POLICY_PENDING 32 /* isolated until its policy is set: in each direction,
                                  * every IP packet is refused (policy_denied_*) until
                                  * ovl_port_policy_set gives that direction a table, so a
                                  * pod's first packet never passes before its policy */

/* offloads (ovl_engine_config_t.offloads, ovl_engine_offloads) */
#define OVL_OFF_TAP_TSO 1        /* TAP virtio-net header: checksum offload, TSO in and GSO out */
#define OVL_OFF_TAP_USO 2        /* TAP UDP segmentation offload (kernel >= 6.2) */
#define OVL_OFF_UDP_GSO 4        /* underlay sends: several datagrams per send (UDP_SEGMENT) */
#define OVL_OFF_UDP_GRO 8        /* underlay receives: several datagrams per receive (UDP_GRO) */
#define OVL_OFF_ALL 15

/* flow steering in force (ovl_engine_steering): the kernel hands each
 * direction of a flow to the worker that owns it */
#define OVL_STEER_UNDERLAY 1     /* the tunnel port's receive sockets (reuseport program) */
#define OVL_STEER_TAP 2          /* multi-queue TAPs' queues (TAP steering program) */

/* network flags */
#define OVL_NET_LEARNING 1
#define OVL_NET_NO_TUNNEL 2      /* frames leave unencapsulated (gateway, uplink): a pod's
                                  * frame may be the underlay MTU plus the Ethernet header;
                                  * no VTEPs (-EOPNOTSUPP), no Geneve options */

/* event types */
#define OVL_EVENT_MISS 1
#define OVL_EVENT_MAC_SEEN 2
#define OVL_EVENT_LEARNED 3
#define OVL_EVENT_POLICY 4       /* a policy verdict: a drop, or an audited would-be drop */

/* FDB entry kinds: who wrote the entry */
#define OVL_FDB_REMOTE 1         /* the control plane: a MAC behind a remote VTEP */
#define OVL_FDB_LOCAL 2          /* a port's own MAC, or one learned behind a port */
#define OVL_FDB_LEARNED 3        /* learned from a decapsulated frame */

/* FDB next-hop kinds: where a frame to the MAC goes */
#define OVL_NH_PORT 1            /* a local port: delivered */
#define OVL_NH_TUNNEL 2          /* a remote VTEP: encapsulated, sent by the tunnel transport */

/* ---- counters (counters.c; names and help come from counters.def) ---- */
size_t ovl_counter_count(void);
const char *ovl_counter_name(size_t id);
const char *ovl_counter_help(size_t id);
int ovl_counter_is_drop(size_t id);
size_t ovl_obj_counter_count(void);
const char *ovl_obj_counter_name(size_t id);

/* ---- wire formats (wire.c) ---- */

/* A tunnel header, VXLAN or Geneve, decoded or to encode. */
typedef struct ovl_tunnel {
    uint32_t vni;          /* 24 bits */
    uint16_t protocol;     /* Geneve protocol type (0x6558); VXLAN: 0x6558 */
    uint8_t flags;         /* Geneve: OVL_GENEVE_F_*; VXLAN: the flags byte */
    uint8_t opts_len;      /* bytes of Geneve TLV options, multiple of 4, <= 252 */
    uint8_t opts[252];     /* Geneve TLV options, as on the wire */
} ovl_tunnel_t;

/* Write t's header into out. Requires cap >= header length; VXLAN ignores the
 * options. Geneve's C flag is set when any option is critical, whatever
 * t->flags says. Returns the header length, or -1 (cap too small, opts_len
 * not a multiple of 4, an option overrunning opts_len, or vni > OVL_VNI_MAX). */
int ovl_wire_encode(int encap, const ovl_tunnel_t *t, uint8_t *out, size_t cap);

/* Read the header at buf[0..len). Returns the header length (the inner frame
 * starts there), or -(drop reason id). VXLAN reserved bits are ignored;
 * Geneve options are only bounds-checked (see ovl_wire_check_options). */
int ovl_wire_decode(int encap, const uint8_t *buf, size_t len, ovl_tunnel_t *t);

/* Walk Geneve TLV options. known[] holds (class << 8 | type) keys, type with
 * its critical bit cleared. Returns 0, or -(drop reason id): an option
 * overruns the area, or an option with the critical bit is not known. */
int ovl_wire_check_options(const uint8_t *opts, size_t len,
                           const uint32_t *known, size_t n_known);

/* An Ethernet frame parsed as far as forwarding, port security and (later)
 * policy and connection tracking need. */
typedef struct ovl_frame {
    uint8_t dst[6];
    uint8_t src[6];
    uint8_t has_vlan;
    uint8_t l3;            /* OVL_L3_* */
    uint16_t vlan_tci;
    uint16_t vlan_tpid;    /* the first tag's TPID (0x8100 or 0x88a8), 0 if untagged */
    uint16_t ethertype;    /* after any 802.1Q tag */
    uint16_t l3_off;       /* offset of the L3 header in the frame */
    uint16_t l4_off;       /* offset of the L4 header, 0 if none */
    uint8_t ip_proto;      /* IPv4 protocol / IPv6 upper-layer next header */
    uint8_t is_fragment;   /* a non-first fragment: no L4 header */
    uint8_t ip_src[16];    /* IPv4 in the first 4 bytes */
    uint8_t ip_dst[16];
    uint16_t sport;        /* TCP/UDP/SCTP ports, 0 otherwise */
    uint16_t dport;
    uint8_t tcp_flags;     /* TCP: the flags byte (FIN 0x01 ... CWR 0x80), 0 otherwise */
    uint8_t icmp_type;     /* ICMP (IPv4, protocol 1) or ICMPv6 (IPv6, next header 58)
                            * type: 133..137 in IPv6 is neighbour discovery; 0 otherwise */
    uint8_t icmp_code;     /* the ICMP or ICMPv6 code, 0 otherwise */
    uint8_t nd_has_lladdr;
    uint16_t arp_op;
    uint8_t arp_sha[6];
    uint8_t arp_spa[4];
    uint8_t arp_tha[6];
    uint8_t arp_tpa[4];
    uint8_t nd_lladdr[6];  /* source (NS, RS, RA) or target (NA, redirect) link-layer option */
    uint8_t nd_target[16]; /* NS, NA, redirect */
} ovl_frame_t;

/* Parse frame[0..len). Returns 0 or -(drop reason id); an IPv6 packet that
 * cannot be classified down to its upper-layer header fails closed (wire.c,
 * design notes). */
int ovl_wire_parse_frame(const uint8_t *frame, size_t len, ovl_frame_t *f);

/* The inner flow hash (RFC 7348 section 5): FNV-1a 32 over (ip_proto, src,
 * dst, sport, dport) for IP, (src mac, dst mac, ethertype) otherwise, then
 * the murmur3 32-bit finaliser. overlay/wire.py documents the exact bytes. */
uint32_t ovl_wire_flow_hash(const ovl_frame_t *f);

/* The steering hash of frame[0..len): symmetric (both directions of a flow
 * hash alike) and read at fixed offsets only, so that the kernel's steering
 * programs compute it too; steer % workers is the worker that owns the flow
 * (engine.h). wire.c documents the bytes; 0 for a frame too short to read. */
uint32_t ovl_wire_steer_hash(const uint8_t *frame, size_t len);

/* The outer UDP source port for a flow hash: slot = hash % slots, port =
 * lo + slot * (hi - lo + 1) / slots. slots == 0 means one slot per port. */
uint16_t ovl_wire_source_port(uint32_t hash, uint16_t lo, uint16_t hi, uint16_t slots);

/* Build the ARP reply to request req (parsed) saying that req's target
 * address is at mac. Returns the frame length or -1. */
int ovl_wire_arp_reply(const ovl_frame_t *req, const uint8_t *mac,
                       uint8_t *out, size_t cap);

/* Build the neighbour advertisement answering solicitation ns (parsed)
 * saying that its target is at mac (solicited, override, target link-layer
 * option, ICMPv6 checksum filled). Returns the frame length or -1. */
int ovl_wire_nd_advert(const ovl_frame_t *ns, const uint8_t *mac,
                       uint8_t *out, size_t cap);

/* ---- the Internet checksum (csum.c) ---- */

/* The Internet checksum (RFC 1071) of buf folded into sum; returns the
 * complemented 16-bit result in host order. */
uint16_t ovl_csum(const uint8_t *buf, size_t len, uint32_t sum);

/* ---- the engine's life cycle (engine.c) ---- */
typedef struct ovl_engine ovl_engine_t;

typedef struct ovl_engine_config {
    int encap;               /* OVL_ENCAP_*: the tunnel port's encapsulation, and the
                              * one networks get when they are added with encap 0 */
    int family;              /* 4 or 6: the underlay */
    uint8_t local_addr[16];  /* underlay address to bind */
    uint16_t udp_port;       /* listen and destination port; 0: the encap's default */
    uint16_t alt_port;       /* the other encapsulation's tunnel port, opened when its
                              * first network is added; 0: its default (4789, 6081) */
    uint16_t sport_lo;       /* outer source port range, default 49152..65535 */
    uint16_t sport_hi;
    uint16_t sport_slots;    /* sockets (source ports) flows are spread over, default 16 */
    int udp_csum;            /* 1: outer UDP checksum (default), 0: zero */
    uint32_t frame_max;      /* largest inner Ethernet frame, bytes; default 1518 */
    uint32_t batch;          /* frames per read burst, default 64 */
    uint32_t workers;        /* worker threads, default 1 */
    uint32_t max_ports;      /* default 1024 */
    uint32_t max_networks;   /* default 1024 */
    uint32_t fdb_size;       /* FDB and neighbour capacity each, default 65536 */
    uint32_t event_ring;     /* events held for the control plane, default 4096 */
    int netns_fd;            /* create sockets and TAPs in this netns; -1: current */
    uint32_t offloads;       /* OVL_OFF_* wanted, default OVL_OFF_ALL; each probed */
    uint32_t busy_poll_us;   /* keep polling this long after the last packet before
                              * sleeping: lower latency for CPU; default 0 (off) */
    uint32_t underlay_mtu;   /* the underlay's MTU, 576..65535: a pod's frame larger than
                              * it less the outer IP (20 or 40) and UDP (8) headers and the
                              * network's tunnel header is frame_oversize at the TAP;
                              * default 0: frame_max alone bounds frames */
    uint32_t conntrack_sessions; /* sessions each worker's connection tracking holds,
                              * OVL_CONNTRACK_SESSIONS_MIN..MAX, default 65536; rounded up
                              * to a power of two times OVL_CT_WAYS (8) */
} ovl_engine_config_t;

#define OVL_CONNTRACK_SESSIONS_DEFAULT 65536
#define OVL_CONNTRACK_SESSIONS_MIN 8
#define OVL_CONNTRACK_SESSIONS_MAX 4194304

void ovl_engine_config_default(ovl_engine_config_t *c);
/* Create the engine on the UDP transport: sockets, tables, workers (not
 * started). Returns 0 and sets *out, or -errno. */
int ovl_engine_create(const ovl_engine_config_t *c, ovl_engine_t **out);
/* Start the worker threads; returns 0 or -errno. Idempotent. */
int ovl_engine_start(ovl_engine_t *e);
/* Stop and join the workers; tables and ports stay. Idempotent. */
int ovl_engine_stop(ovl_engine_t *e);
/* Stop, close every port and socket, free everything. */
void ovl_engine_destroy(ovl_engine_t *e);
/* The tunnel port: listened on, and the port of every VTEP given as 0. */
int ovl_engine_udp_port(ovl_engine_t *e);
/* The tunnel port of encapsulation encap (OVL_ENCAP_*): the port its networks
 * listen on once one exists, and the port of their VTEPs given as 0; -EINVAL
 * for another value. */
int ovl_engine_tunnel_port(ovl_engine_t *e, int encap);
/* The offloads in use (OVL_OFF_*): asked for and supported by this kernel.
 * The TAP ones are known once a TAP port exists. */
uint32_t ovl_engine_offloads(ovl_engine_t *e);
/* The flow steering in force (OVL_STEER_*). With one worker every flow is
 * its own: both bits. Without a bit, frames the kernel hands to a worker
 * other than their flow's owner are counted (steer_misses). */
uint32_t ovl_engine_steering(ovl_engine_t *e);

/* ---- networks, VTEPs, options (network.c) ---- */

/* Add network vni with encapsulation encap (OVL_ENCAP_*; 0: the engine's).
 * A VNI may be added once. Networks of both encapsulations live side by
 * side: the first tunnel network of the encapsulation that is not the
 * engine's opens that encapsulation's tunnel port (alt_port), and fails with
 * its error (-EADDRINUSE: the port is taken, or is the engine's own).
 * flags: OVL_NET_*. */
int ovl_network_add(ovl_engine_t *e, uint32_t vni, int encap, uint32_t flags);
int ovl_network_del(ovl_engine_t *e, uint32_t vni);
/* Geneve options sent with every packet of the network (TLV bytes). */
int ovl_network_set_options(ovl_engine_t *e, uint32_t vni, const uint8_t *tlv, size_t len);
/* Declare a Geneve option (class, type without critical bit) as understood
 * by this node: packets carrying it with the critical bit are accepted. */
int ovl_network_known_option_add(ovl_engine_t *e, uint16_t cls, uint8_t type);

/* Member VTEPs of a network: flood list and accepted sources. port 0 means
 * the tunnel port of the network's encapsulation (ovl_engine_tunnel_port). */
int ovl_network_vtep_add(ovl_engine_t *e, uint32_t vni, int family, const uint8_t *addr,
                         uint16_t port);
int ovl_network_vtep_del(ovl_engine_t *e, uint32_t vni, int family, const uint8_t *addr);

/* ---- ports (port.c) ---- */

/* ovl_port_add creates a TAP (ifname may be "" for a generated name, written
 * back to ifname_out, 16 bytes) in the network namespace netns_fd (-1: the
 * engine's) — a pod's TAP can be born in the pod's namespace under its final
 * name, with no move and no rename; ovl_port_add_fd adopts an open packet fd
 * (a TAP opened elsewhere, or a SOCK_SEQPACKET socket in tests; with
 * OVL_PORT_UPLINK a packet socket with PACKET_VNET_HDR, -EOPNOTSUPP unless the
 * engine's offloads have OVL_OFF_TAP_TSO). Both return the port id (>= 0) or
 * -errno. */
int ovl_port_add(ovl_engine_t *e, uint32_t vni, const char *ifname, int netns_fd,
                 const uint8_t *mac, uint32_t flags, char *ifname_out);
int ovl_port_add_fd(ovl_engine_t *e, uint32_t vni, int fd,
                    const uint8_t *mac, uint32_t flags);
/* Re-attach: make a port of the existing TAP ifname in the network namespace
 * netns_fd (-1: the engine's), typically a persistent TAP a previous engine
 * created and the control plane moved into a pod's namespace and renamed. It
 * is opened from inside that namespace, with every queue when the engine has
 * several workers, and keeps its ifindex, addresses and routes; its MAC is set
 * only where it differs from mac. Never creates a device. The port is
 * persistent (OVL_PORT_PERSIST implied): ovl_port_del removes the device,
 * ovl_engine_destroy leaves it for the next engine. Returns the port id or
 * -errno: -ENODEV no interface ifname there, -EMEDIUMTYPE it is not a TAP,
 * -ECHRNG its queue mode differs (multi-queue exactly when workers > 1),
 * -EBUSY another process holds it; on failure the device is left as found. */
int ovl_port_attach(ovl_engine_t *e, uint32_t vni, const char *ifname, int netns_fd,
                    const uint8_t *mac, uint32_t flags);
int ovl_port_add_ip(ovl_engine_t *e, int port_id, int family, const uint8_t *addr);
/* ovl_port_del removes a port and closes its TAP (a persistent one is deleted
 * too); ovl_port_detach removes it but leaves a persistent TAP in place, as
 * ovl_engine_destroy does. Both return 0 or -ENOENT. */
int ovl_port_del(ovl_engine_t *e, int port_id);
int ovl_port_detach(ovl_engine_t *e, int port_id);

/* ---- the FDB and neighbours (fdb.c) ---- */

/* Remote MACs (FDB) and neighbours (ARP/ND suppression). */
int ovl_fdb_add(ovl_engine_t *e, uint32_t vni, const uint8_t *mac,
                int family, const uint8_t *vtep, uint16_t port);
int ovl_fdb_del(ovl_engine_t *e, uint32_t vni, const uint8_t *mac);
int ovl_fdb_neigh_add(ovl_engine_t *e, uint32_t vni, int family, const uint8_t *ip,
                      const uint8_t *mac);
int ovl_fdb_neigh_del(ovl_engine_t *e, uint32_t vni, int family, const uint8_t *ip);

typedef struct ovl_fdb_entry {
    uint32_t vni;
    uint8_t mac[6];
    uint8_t kind;            /* OVL_FDB_*: who wrote it */
    uint8_t family;
    uint8_t vtep[16];        /* remote and learned entries */
    uint16_t vtep_port;
    uint8_t nexthop;         /* OVL_NH_*: where frames to the MAC go */
    int32_t port_id;         /* local entries, else -1 */
    uint64_t updated_ns;     /* CLOCK_MONOTONIC */
    uint64_t used_ns;        /* 0: never used */
} ovl_fdb_entry_t;

/* Copy up to n FDB entries into out; returns how many there are in all. */
int ovl_fdb_dump(ovl_engine_t *e, ovl_fdb_entry_t *out, size_t n);

/* ---- counter readers (counters.c) ---- */

/* The engine's counters (ovl_counter_count() values), a network's and a
 * port's (ovl_obj_counter_count() values), each summed over the workers.
 * Return how many values were written, or -ENOENT. */
int ovl_counters_engine(ovl_engine_t *e, uint64_t *out, size_t n);
int ovl_counters_network(ovl_engine_t *e, uint32_t vni, uint64_t *out, size_t n);
int ovl_counters_port(ovl_engine_t *e, int port_id, uint64_t *out, size_t n);

/* ---- events for the control plane (events.c) ---- */

/* The eventfd becomes readable when events are queued; ovl_events_take
 * drains up to n of them and returns the count. */
typedef struct ovl_event {
    uint32_t type;           /* OVL_EVENT_* */
    uint32_t vni;
    int32_t port_id;         /* the port that sent the frame, or -1 */
    uint8_t mac[6];          /* MISS: destination; MAC_SEEN, LEARNED: source */
    uint8_t family;          /* LEARNED: the VTEP's family */
    uint8_t pad;
    uint8_t addr[16];        /* LEARNED: the VTEP's address */
    /* POLICY: the verdict, the rule that gave it and the packet's 5-tuple */
    uint8_t verdict;         /* OVL_VERDICT_* */
    uint8_t direction;       /* OVL_POLICY_INGRESS or OVL_POLICY_EGRESS */
    uint8_t proto;           /* IP protocol */
    uint8_t ip_family;       /* 4 or 6 */
    uint32_t rule_id;        /* ovl_policy_line_t.id, or OVL_RULE_ISOLATION, OVL_RULE_PENDING */
    uint16_t sport, dport;   /* TCP/UDP/SCTP ports, ICMP echo id in both */
    uint8_t src[16], dst[16];
} ovl_event_t;

int ovl_events_fd(ovl_engine_t *e);
int ovl_events_take(ovl_engine_t *e, ovl_event_t *out, size_t n);

/* ---- network policy (policy.c: tables per port, acl.c: the classifier,
 * conntrack.c: sessions) ----
 *
 * A port has one compiled rule table per direction. The table is a list of
 * lines (ovl_policy_line_t) in precedence order: admin tier first, then
 * NetworkPolicy, then baseline; within a tier, in the order the caller
 * gives. The lines of one rule are consecutive and share `rule` (a rank:
 * the first rule is 0, each new rule one more) and `id`. A rule matches a
 * packet when its peer matches (the union of its PEER lines, each less the
 * EXCEPT lines that follow it; no PEER line: any address) and its port does
 * (the union of its PORT lines; no PORT line: any protocol and port). The
 * peer is the remote end: the source of an ingress packet, the destination
 * of an egress one; the port is the destination port of the connection's
 * first packet.
 *
 * The verdict (acl.h): the first admin rule that matches decides (ALLOW,
 * DENY, or PASS: skip to NetworkPolicy); then, when the table is ISOLATED
 * (the port is selected by a NetworkPolicy in this direction), allowed if
 * any NetworkPolicy rule matches, else denied; then the first baseline rule
 * that matches; else allowed. A connection a table allowed is tracked:
 * its later packets and its replies pass without classification until the
 * port's table changes, when the next packet is classified again. */
#define OVL_POLICY_INGRESS 0
#define OVL_POLICY_EGRESS 1

#define OVL_TIER_ADMIN 0
#define OVL_TIER_NETPOL 1
#define OVL_TIER_BASELINE 2

#define OVL_ACT_ALLOW 1
#define OVL_ACT_DENY 2
#define OVL_ACT_PASS 3           /* admin tier only: on to NetworkPolicy */

#define OVL_LINE_PEER 1          /* family, addr, prefix_len: a peer block */
#define OVL_LINE_EXCEPT 2        /* a prefix taken out of the PEER line before it */
#define OVL_LINE_PORT 3          /* proto (0: any protocol, every port) and port_lo..port_hi */

#define OVL_RULE_AUDIT 1         /* line flag, on the rule's first line: a deny by this rule
                                  * is counted (policy_audit) and the packet forwarded */

/* ovl_port_policy_set flags */
#define OVL_POLICY_ISOLATED 1    /* the port is selected by a NetworkPolicy in this direction */
#define OVL_POLICY_AUDIT 2       /* every deny of this table is audited, not enforced */

/* the rule ids of the implicit verdicts (hit counters, events) */
#define OVL_RULE_ISOLATION 4294967295 /* isolated, and no NetworkPolicy rule allowed it */
#define OVL_RULE_DEFAULT 4294967294   /* nothing matched: allowed */
#define OVL_RULE_PENDING 4294967293   /* OVL_PORT_POLICY_PENDING: no table yet */

/* ovl_event_t.verdict */
#define OVL_VERDICT_DENY 1
#define OVL_VERDICT_AUDIT 2      /* a deny that was only counted */

#define OVL_POLICY_RULES_MAX 65536 /* rules in one table */
#define OVL_POLICY_LINES_MAX 1048576

typedef struct ovl_policy_line {
    uint32_t rule;           /* the rule's rank in the table: 0, 1, 2, ... */
    uint32_t id;             /* reported by hit counters and events: (policy, rule) */
    uint8_t tier;            /* OVL_TIER_*: never lower than the rule before's */
    uint8_t action;          /* OVL_ACT_*; NetworkPolicy rules only ALLOW */
    uint8_t kind;            /* OVL_LINE_* */
    uint8_t flags;           /* OVL_RULE_* */
    uint8_t family;          /* PEER, EXCEPT: 4 or 6 */
    uint8_t prefix_len;      /* PEER, EXCEPT: 0..32 or 0..128 */
    uint8_t proto;           /* PORT: 0 (any), 6 (TCP), 17 (UDP) or 132 (SCTP) */
    uint8_t pad;
    uint16_t port_lo;        /* PORT: the range, inclusive (0..65535: every port) */
    uint16_t port_hi;
    uint8_t addr[16];        /* PEER, EXCEPT: the prefix (host bits ignored) */
} ovl_policy_line_t;

/* Compile lines[0..n) into port_id's table for direction (OVL_POLICY_*) and
 * put it in force at once, for every packet from the next burst on; the old
 * table goes. n 0 without flags: no policy (everything passes, nothing is
 * tracked). The table is built without any lock; only the swap takes the
 * writer lock. Hit counters carry over to the new table by rule id.
 * Returns 0, -ENOENT (no such port), -EINVAL (a line out of order or a field
 * out of range: the bindings name it), -EPROTONOSUPPORT (a PORT line's
 * proto), -E2BIG (more than OVL_POLICY_RULES_MAX rules) or -ENOMEM. */
int ovl_port_policy_set(ovl_engine_t *e, int port_id, int direction,
                        const ovl_policy_line_t *lines, size_t n, uint32_t flags);

/* The hit counters of port_id's table for direction: for every rule, and
 * for the implicit OVL_RULE_ISOLATION and OVL_RULE_DEFAULT, its id and the
 * connections it decided (first packets, and packets classified again after
 * a table change), summed over the workers. Writes up to n and returns how
 * many there are, or -ENOENT. A direction without a table has none. */
int ovl_port_policy_hits(ovl_engine_t *e, int port_id, int direction, uint32_t *ids,
                         uint64_t *hits, size_t n);

/* ovl_port_policy_probe verdicts */
#define OVL_PROBE_NONE 0         /* no table in that direction (no policy): passes */
#define OVL_PROBE_ALLOW 1
#define OVL_PROBE_DENY 2
#define OVL_PROBE_AUDIT 3        /* a deny that audit forwards (counted as policy_audit) */

/* What port_id's table in force for direction decides for the first packet
 * of a connection with the peer (family 4 or 6; 16 bytes, an IPv4 address in
 * the first 4) over IP protocol proto to destination port dport (ignored
 * for protocols other than TCP, UDP and SCTP): classified as the stage
 * would classify it, by the same classifier and the same audit rule. A port
 * still pending (OVL_PORT_POLICY_PENDING, that direction never set) is
 * OVL_PROBE_DENY by OVL_RULE_PENDING; no table is OVL_PROBE_NONE with
 * OVL_RULE_DEFAULT. *rule_id: the deciding rule's id (or OVL_RULE_*). A dry
 * run under the reader lock: no session, hit counter, counter or event
 * changes, so a verifier may compare what the data plane holds with what the
 * policies say without sending a packet. Returns an OVL_PROBE_* verdict,
 * -ENOENT (no such port) or -EINVAL (direction, family, a NULL pointer). */
int ovl_port_policy_probe(ovl_engine_t *e, int port_id, int direction, int family,
                          const uint8_t *peer, uint8_t proto, uint16_t dport,
                          uint32_t *rule_id);

/* Sessions of connection tracking held by the workers, summed. */
uint64_t ovl_conntrack_sessions(ovl_engine_t *e);
