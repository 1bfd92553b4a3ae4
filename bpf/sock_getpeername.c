/* cgroup getpeername4 on a node's pods subtree: a captured socket's peer is the original
 * destination, so the app's view stays honest. */
#include <uapi/linux/bpf.h>
#include "weft_maps.h"

int weft_getpeername4(struct bpf_sock_addr *ctx)
{
    __u64 cookie = bpf_get_socket_cookie(ctx);
    struct weft_dst *orig = weft_dst_by_cookie.lookup(&cookie);
    if (orig) {
        ctx->user_ip4 = orig->ip;
        ctx->user_port = orig->port;
    }
    return 1;
}
