/* Maps shared by every weft program, and their key/value layouts.
 *
 * Declared once here; node_agent/bpfmaps.py mirrors the structs (change both together).
 * Every map is pinned under WEFT_PIN_DIR (a per-node folder in /sys/fs/bpf) so that a
 * restarted agent adopts the same maps and capture never stops.
 */
#ifndef WEFT_MAPS_H
#define WEFT_MAPS_H

#ifndef WEFT_PIN_DIR
#error "compile with -DWEFT_PIN_DIR=\"/sys/fs/bpf/...\""
#endif

/* An enrolled pod, keyed by the cookie of its network namespace. */
struct weft_pod {
    __u32 ip;        /* the pod's IPv4 address, network order */
    __u32 flags;     /* reserved, 0 (kept so that pinned maps keep their layout) */
};

/* An original destination, as the app asked for it. */
struct weft_dst {
    __u32 ip;        /* network order */
    __u16 port;      /* network order */
    __u16 pad;
};

/* The client end of a captured connection: what ztunnel sees as the peer. */
struct weft_peer {
    __u32 ip;        /* network order */
    __u16 port;      /* network order */
    __u16 pad;
};

/* A port the mesh leaves alone, for one pod (netns cookie) or for all (cookie 0). */
struct weft_port_key {
    __u64 netns;
    __u16 port;      /* host order */
    __u16 pad[3];
};

struct weft_config {
    __u32 gateway_ip;     /* the node side of pod veths (169.254.1.1), network order */
    __u32 node_ip;        /* the node's own address, network order */
    __u16 outbound_port;  /* ztunnel's captured-outbound listener, host order (15001) */
    __u16 inbound_port;   /* ztunnel's inbound plaintext listener, host order (15006) */
    __u32 mark;           /* skb mark that routes a steered packet to the node's stack */
};

/* An enrolled pod, keyed by its IP: what the inbound (tc) path checks. */
struct weft_pod_ip {
    __u32 flags;     /* reserved, 0; mTLS modes are ztunnel's (per port, from policy) */
};

#define PINNED(name) WEFT_PIN_DIR "/" name

BPF_TABLE_PINNED("hash", __u64, struct weft_pod, weft_enrolled, 65536, PINNED("enrolled"));
BPF_TABLE_PINNED("hash", __u32, struct weft_pod_ip, weft_enrolled_ips, 65536,
                 PINNED("enrolled_ips"));
BPF_TABLE_PINNED("hash", struct weft_port_key, __u8, weft_excluded_ports, 4096,
                 PINNED("excluded_ports"));
BPF_TABLE_PINNED("lru_hash", __u64, struct weft_dst, weft_dst_by_cookie, 262144,
                 PINNED("dst_by_cookie"));
BPF_TABLE_PINNED("lru_hash", struct weft_peer, struct weft_dst, weft_dst_by_peer, 262144,
                 PINNED("dst_by_peer"));
BPF_TABLE_PINNED("array", __u32, struct weft_config, weft_config, 1, PINNED("config"));

/* Map calls are rewritten by bcc only in the file being compiled, not in headers: look the
 * config up in each program with `__u32 zero = 0; weft_config.lookup(&zero)`. */

#endif
