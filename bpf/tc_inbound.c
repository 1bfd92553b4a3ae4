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
 * process of the node, such as ztunnel) got past steering; drop it rather than let
 * plaintext reach the pod. (A Service DNAT on this node happens after tc ingress: the node
 * agent's nftables rule steers those connections, see node_agent/nft.py; the guard is what
 * stays when that cannot, e.g. with no listener.)
 *
 * Both read IPv4 headers of any length (IP options) and drop an IPv4 TCP packet to an
 * enrolled pod that they cannot read (bad header length, truncated, a fragment) rather than
 * let it pass unexamined.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include "weft_maps.h"

#define TCP_LISTEN_STATE 10 /* BPF_TCP_LISTEN */
#ifndef IP_MF
#define IP_MF 0x2000      /* more fragments */
#define IP_OFFSET 0x1fff  /* fragment offset */
#endif

/* What read_tcp4 found. */
#define PKT_OTHER 0   /* not IPv4 TCP (or too short to tell where it goes): let it pass */
#define PKT_TCP 1     /* IPv4 TCP, all of struct tcp4 read */
#define PKT_BROKEN 2  /* IPv4 TCP whose TCP header cannot be read: only the addresses are */

/* The fields of an IPv4 TCP packet the programs act on, in network order. */
struct tcp4 {
    __u32 saddr;
    __u32 daddr;
    __u16 sport;
    __u16 dport;
    __u8 syn;
    __u8 ack;
};

/* Read an IPv4 TCP packet's addresses, ports and flags, whatever its IP header length
 * (ihl 5..15: IP options are skipped, not refused). Copied out with bpf_skb_load_bytes,
 * which checks every read against the packet (also when the headers are not in the linear
 * part), so the verifier needs no bound on the variable TCP offset. */
static __always_inline int read_tcp4(struct __sk_buff *skb, struct tcp4 *p)
{
    if (skb->protocol != bpf_htons(ETH_P_IP))
        return PKT_OTHER;
    struct iphdr ip;
    if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
        return PKT_OTHER;  /* no destination to judge by; the IP layer drops it anyway */
    if (ip.protocol != IPPROTO_TCP)
        return PKT_OTHER;
    p->saddr = ip.saddr;
    p->daddr = ip.daddr;
    __u32 ihl = ip.ihl;
    if (ip.version != 4 || ihl < 5)
        return PKT_BROKEN;
    /* A fragment: only the first holds the TCP header, maybe not all of it, and TCP sends
     * with DF; none is examined, so none is let through to an enrolled pod. */
    if (ip.frag_off & bpf_htons(IP_MF | IP_OFFSET))
        return PKT_BROKEN;
    __u32 l4 = ihl * 4;
    __u32 tot_len = bpf_ntohs(ip.tot_len);
    /* tot_len 0 is what a GRO packet above 64 KiB (BIG TCP) carries */
    if (tot_len && tot_len < l4 + sizeof(struct tcphdr))
        return PKT_BROKEN;
    struct tcphdr tcp;
    if (bpf_skb_load_bytes(skb, ETH_HLEN + l4, &tcp, sizeof(tcp)) < 0)
        return PKT_BROKEN;
    p->sport = tcp.source;
    p->dport = tcp.dest;
    p->syn = tcp.syn;
    p->ack = tcp.ack;
    return PKT_TCP;
}

int weft_inbound(struct __sk_buff *skb)
{
    struct tcp4 p = {};
    int kind = read_tcp4(skb, &p);
    if (kind == PKT_OTHER)
        return TC_ACT_OK;
    __u32 daddr = p.daddr, saddr = p.saddr;
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
    if (kind == PKT_BROKEN)
        return to_enrolled ? TC_ACT_SHOT : TC_ACT_OK;
    __u32 zero = 0;
    struct weft_config *cfg = weft_config.lookup(&zero);
    if (!cfg || !cfg->inbound_port)
        return TC_ACT_SHOT;

    struct bpf_sock_tuple tuple = {};
    tuple.ipv4.saddr = p.saddr;
    tuple.ipv4.daddr = p.daddr;
    tuple.ipv4.sport = p.sport;
    tuple.ipv4.dport = p.dport;
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
    if (!to_enrolled || !p.syn || p.ack)
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

/* The guard's verdict on a packet not sent by the node (tested on its own, as test runs
 * always carry a socket). */
static __always_inline int guard_packet(struct __sk_buff *skb)
{
    struct tcp4 p = {};
    int kind = read_tcp4(skb, &p);
    if (kind == PKT_OTHER)
        return TC_ACT_OK;
    __u32 daddr = p.daddr;
    if (!weft_enrolled_ips.lookup(&daddr))
        return TC_ACT_OK;
    if (kind == PKT_BROKEN || (p.syn && !p.ack))
        return TC_ACT_SHOT;
    return TC_ACT_OK;
}

int weft_guard(struct __sk_buff *skb)
{
    if (skb->sk)
        return TC_ACT_OK;  /* sent by a process of this node (ztunnel, a probe) */
    return guard_packet(skb);
}
