/* cgroup getsockopt on a node's system subtree (where ztunnel runs): answer
 * getsockopt(SOL_IP, SO_ORIGINAL_DST) on an accepted captured connection with the address
 * the app asked for, as iptables REDIRECT would. */
#include <uapi/linux/bpf.h>
#include <linux/in.h>
#include "weft_maps.h"

#define SOL_IP_ 0
#define SO_ORIGINAL_DST_ 80

int weft_getsockopt(struct bpf_sockopt *ctx)
{
    if (ctx->level != SOL_IP_ || ctx->optname != SO_ORIGINAL_DST_)
        return 1;
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 1;
    struct weft_peer peer = {.ip = sk->dst_ip4, .port = (__u16)sk->dst_port};
    struct weft_dst *orig = weft_dst_by_peer.lookup(&peer);
    if (!orig)
        return 1;
    struct sockaddr_in *sin = ctx->optval;
    if ((void *)(sin + 1) > ctx->optval_end)
        return 1;
    sin->sin_family = AF_INET;
    sin->sin_port = orig->port;
    sin->sin_addr.s_addr = orig->ip;
    ctx->optlen = sizeof(*sin);
    /* keep the two 4-byte context stores apart: merged into one 8-byte store, the verifier
     * refuses them */
    asm volatile("" ::: "memory");
    ctx->retval = 0;
    return 1;
}
