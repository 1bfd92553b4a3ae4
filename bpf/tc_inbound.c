/* tc programs on a node's devices: the inbound side of the mesh.
 *
 * weft_inbound (ingress of the underlay device and of every pod's host-side veth): a new
 * plaintext TCP connection to an enrolled pod is handed to the node ztunnel's inbound
 * plaintext listener (bpf_sk_assign + a mark that routes it to the local stack), so policy and
 * telemetry apply to it; the rest of such a flow follows its socket. With no listener the
 * SYN is dropped: fail closed, never around the mesh. Packets from an enrolled pod that
 * belong to a socket of the node (ztunnel's connection to the pod, made with the client's
 * address) are delivered to that socket, wherever the client is.
 *
 * weft_guard (egress of pod veths): a TCP SYN forwarded to an enrolled pod (not sent by a
 * process of the node, such as ztunnel) got past weft_inbound, e.g. after a Service DNAT on
 * this node; drop it rather than let plaintext reach the pod.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include "weft_maps.h"

#define TCP_LISTEN_STATE 10 /* BPF_TCP_LISTEN */

/* The TCP header of an IPv4 packet without IP options (and its IP header in *ip), bounds
 * checked for the verifier; NULL for anything else, which both programs let pass. */
static __always_inline struct tcphdr *ipv4_tcp(struct __sk_buff *skb, struct iphdr **ip)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
        return NULL;
    struct iphdr *iph = (void *)(eth + 1);
    if ((void *)(iph + 1) > data_end || iph->protocol != IPPROTO_TCP || iph->ihl != 5)
        return NULL;
    struct tcphdr *tcp = (void *)(iph + 1);
    if ((void *)(tcp + 1) > data_end)
        return NULL;
    *ip = iph;
    return tcp;
}

int weft_inbound(struct __sk_buff *skb)
{
    struct iphdr *ip;
    struct tcphdr *tcp = ipv4_tcp(skb, &ip);
    if (!tcp)
        return TC_ACT_OK;
    __u32 daddr = ip->daddr, saddr = ip->saddr;
    /* The empty asm keeps the compiler from OR-ing the two map pointers together, which
     * the verifier refuses. */
    int to_enrolled = weft_enrolled_ips.lookup(&daddr) ? 1 : 0;
    asm volatile("" : "+r"(to_enrolled));
    /* From a local enrolled pod: maybe a reply to ztunnel, which connects to pods with the
     * original client's address as its source (as Istio ambient does). */
    int from_enrolled = weft_enrolled_ips.lookup(&saddr) ? 1 : 0;
    asm volatile("" : "+r"(from_enrolled));
    if (!to_enrolled && !from_enrolled)
        return TC_ACT_OK;
    __u32 zero = 0;
    struct weft_config *cfg = weft_config.lookup(&zero);
    if (!cfg || !cfg->inbound_port)
        return TC_ACT_SHOT;

    struct bpf_sock_tuple tuple = {};
    tuple.ipv4.saddr = ip->saddr;
    tuple.ipv4.daddr = ip->daddr;
    tuple.ipv4.sport = tcp->source;
    tuple.ipv4.dport = tcp->dest;
    struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4),
                                             BPF_F_CURRENT_NETNS, 0);
    if (sk) {
        if (sk->state != TCP_LISTEN_STATE) {
            /* a flow the node terminates (a steered one, or ztunnel's own): to its socket */
            long err = bpf_sk_assign(skb, sk, 0);
            bpf_sk_release(sk);
            if (err == 0)
                skb->mark |= cfg->mark;
            return TC_ACT_OK;
        }
        bpf_sk_release(sk);
    }
    if (!to_enrolled || !tcp->syn || tcp->ack)
        return TC_ACT_OK;  /* not a new connection to an enrolled pod; or mid-flow and not
                              the node's: e.g. a connection from before enrollment */

    tuple.ipv4.daddr = cfg->node_ip;
    tuple.ipv4.dport = bpf_htons(cfg->inbound_port);
    sk = bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
    if (!sk)
        return TC_ACT_SHOT;
    if (sk->state != TCP_LISTEN_STATE) {
        bpf_sk_release(sk);
        return TC_ACT_SHOT;
    }
    long err = bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);
    if (err != 0)
        return TC_ACT_SHOT;
    skb->mark |= cfg->mark;
    return TC_ACT_OK;
}

int weft_guard(struct __sk_buff *skb)
{
    if (skb->sk)
        return TC_ACT_OK;  /* sent by a process of this node (ztunnel, a probe) */
    struct iphdr *ip;
    struct tcphdr *tcp = ipv4_tcp(skb, &ip);
    if (!tcp)
        return TC_ACT_OK;
    __u32 daddr = ip->daddr;
    if (tcp->syn && !tcp->ack && weft_enrolled_ips.lookup(&daddr))
        return TC_ACT_SHOT;
    return TC_ACT_OK;
}
