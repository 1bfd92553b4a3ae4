/* cgroup connect4/connect6 on a node's pods subtree: send an enrolled pod's TCP connects to
 * the node's ztunnel (outbound port) and remember where the app wanted to go. */
#include <uapi/linux/bpf.h>
#include <linux/in.h>
#include <linux/socket.h>
#include "weft_maps.h"

#define SOCK_STREAM_ 1  /* linux/net.h: not includable from BPF programs */
#define ALLOW 1
#define DENY 0

static __always_inline int excluded(__u64 netns, __u16 port)
{
    struct weft_port_key key = {.netns = 0, .port = port};
    if (weft_excluded_ports.lookup(&key))
        return 1;
    key.netns = netns;
    return weft_excluded_ports.lookup(&key) != NULL;
}

/* Decide for an IPv4 destination; rewrites ip and port when capturing. */
static __always_inline int capture4(__u64 cookie, __u64 netns, __u32 *ip, __u32 *port)
{
    struct weft_pod *pod = weft_enrolled.lookup(&netns);
    if (!pod)
        return ALLOW;                          /* not enrolled: untouched */
    __u32 dst = *ip;
    __u16 dport = (__u16)*port;                /* network order in the low 16 bits */
    if ((bpf_ntohl(dst) >> 24) == 127)
        return ALLOW;                          /* loopback */
    __u32 zero = 0;
    struct weft_config *cfg = weft_config.lookup(&zero);
    if (!cfg || !cfg->outbound_port)
        return DENY;                           /* enrolled but no config: fail closed */
    if (dst == cfg->gateway_ip || dst == cfg->node_ip || dst == pod->ip)
        return ALLOW;                          /* the node itself, or the pod itself */
    if (excluded(netns, bpf_ntohs(dport)))
        return ALLOW;
    struct weft_dst orig = {.ip = dst, .port = dport};
    weft_dst_by_cookie.update(&cookie, &orig);
    *ip = cfg->gateway_ip;
    *port = bpf_htons(cfg->outbound_port);
    return ALLOW;
}

int weft_connect4(struct bpf_sock_addr *ctx)
{
    if (ctx->type != SOCK_STREAM_)
        return ALLOW;                          /* UDP (and DNS) are left alone */
    __u32 ip = ctx->user_ip4, port = ctx->user_port;
    int verdict = capture4(bpf_get_socket_cookie(ctx), bpf_get_netns_cookie(ctx), &ip, &port);
    ctx->user_ip4 = ip;
    ctx->user_port = port;
    return verdict;
}

int weft_connect6(struct bpf_sock_addr *ctx)
{
    if (ctx->type != SOCK_STREAM_)
        return ALLOW;
    __u64 netns = bpf_get_netns_cookie(ctx);
    if (!weft_enrolled.lookup(&netns))
        return ALLOW;
    __u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2];
    __u32 w3 = ctx->user_ip6[3];
    if (w0 == 0 && w1 == 0 && w2 == 0 && w3 == bpf_htonl(1))
        return ALLOW;                          /* ::1 */
    if (w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff)) {
        /* v4-mapped: the same rules as connect4, or it would be a bypass */
        __u32 ip = w3, port = ctx->user_port;
        int verdict = capture4(bpf_get_socket_cookie(ctx), netns, &ip, &port);
        ctx->user_ip6[3] = ip;
        ctx->user_port = port;
        return verdict;
    }
    return DENY;  /* native IPv6: ztunnel has no IPv6 listener yet, so refuse, never bypass */
}
