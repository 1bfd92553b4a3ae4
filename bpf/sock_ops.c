/* sockops on a node's pods subtree: once a captured connection has its local port, key its
 * original destination by that client address, which is the peer ztunnel will accept. */
#include <uapi/linux/bpf.h>
#include "weft_maps.h"

int weft_sockops(struct bpf_sock_ops *skops)
{
    __u64 cookie;
    struct weft_dst *orig;
    switch (skops->op) {
    case BPF_SOCK_OPS_TCP_CONNECT_CB:
        cookie = bpf_get_socket_cookie(skops);
        orig = weft_dst_by_cookie.lookup(&cookie);
        if (orig) {
            struct weft_peer peer = {.ip = skops->local_ip4,
                                     .port = bpf_htons((__u16)skops->local_port)};
            weft_dst_by_peer.update(&peer, orig);
            bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
        }
        break;
    case BPF_SOCK_OPS_STATE_CB:
        if (skops->args[1] == BPF_TCP_CLOSE) {
            struct weft_peer peer = {.ip = skops->local_ip4,
                                     .port = bpf_htons((__u16)skops->local_port)};
            weft_dst_by_peer.delete(&peer);
            cookie = bpf_get_socket_cookie(skops);
            weft_dst_by_cookie.delete(&cookie);
        }
        break;
    }
    return 1;
}
