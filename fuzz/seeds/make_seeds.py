#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs (a few well-formed messages each, so that a
short run starts from real DNS shapes instead of discovering them). Run from this
directory; the outputs are committed."""
import os
import struct


def name(text):
    out = b""
    for label in text.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def header(id_, flags, qd=1, an=0, ns=0, ar=0):
    return struct.pack(">HHHHHH", id_, flags, qd, an, ns, ar)


def question(qname, qtype=1, qclass=1):
    return name(qname) + struct.pack(">HH", qtype, qclass)


def opt(size=1232, version=0, do=False):
    return b"\0" + struct.pack(">HHBBHH", 41, size, 0, version, 0x8000 if do else 0, 0)


def rr(owner_ptr, rtype, ttl, rdata):
    return struct.pack(">HHHIH", owner_ptr, rtype, 1, ttl, len(rdata)) + rdata


def soa(ttl, minimum):
    rdata = name("ns.dns.cluster.local") + name("hostmaster.cluster.local")
    rdata += struct.pack(">IIIII", 1, 7200, 1800, 86400, minimum)
    # owner "cluster.local": the question's suffix is not known here, spell it out.
    return name("cluster.local") + struct.pack(">HHIH", 6, 1, ttl, len(rdata)) + rdata


def a(i):
    return bytes([10, 0, 0, i])


QUERIES = {
    "a_edns": header(1, 0x0100, ar=1) + question("a.cluster.local") + opt(),
    "a_mixed_case_plain": header(2, 0x0100) + question("A.ClUsTeR.lOcAl"),
    "big_plain_udp": header(3, 0x0100) + question("big.cluster.local"),
    "nx_do_cd": header(4, 0x0110, ar=1) + question("nx.cluster.local") + opt(do=True),
    "heartbeat": header(5, 0x0100) + question("nldns-heartbeat.invalid"),
    "axfr": header(6, 0x0000) + question("cluster.local", 252),
    "notify": header(7, 0x2000) + question("cluster.local", 6),
    "edns_version_1": header(8, 0x0100, ar=1) + question("a.cluster.local") + opt(version=1),
    "two_questions": header(9, 0x0100, qd=2) + question("a.cluster.local") * 2,
    "miss_aaaa": header(10, 0x0100, ar=1) + question("web.default.svc.cluster.local", 28) + opt(),
}

PTR_Q = 0xC00C  # compression pointer to the question name
REPLIES = {
    "positive": (1, header(0x1111, 0x8180, an=2) + question("web.default.svc.cluster.local")
                 + rr(PTR_Q, 1, 30, a(1)) + rr(PTR_Q, 1, 10, a(2))),
    "nxdomain": (9, header(0x2222, 0x8183, ns=1) + question("nx.cluster.local") + soa(30, 5)),
    "nodata": (0, header(0x3333, 0x8180, ns=1) + question("svc.cluster.local", 15) + soa(60, 4)),
    "servfail": (1, header(0x4444, 0x8182) + question("down.example.com")),
    "refused": (0, header(0x5555, 0x8185) + question("example.org")),
    "truncated": (1, header(0x6666, 0x8380) + question("big.cluster.local")),
    "cname_chain": (11, header(0x7777, 0x8180, an=2, ar=1) + question("alias.example.org")
                    + rr(PTR_Q, 5, 60, name("www.example.org"))
                    + name("www.example.org") + struct.pack(">HHIH", 1, 1, 60, 4) + a(20)
                    + opt()),
    "big": (0, header(0x8888, 0x8180, an=60) + question("big.cluster.local")
            + b"".join(rr(PTR_Q, 1, 30, a(i)) for i in range(60))),
}


def write(directory, items):
    os.makedirs(directory, exist_ok=True)
    for label, data in items.items():
        with open(os.path.join(directory, label), "wb") as f:
            f.write(data)


write("query", QUERIES)
write("upstream_reply", {k: bytes([sel]) + msg for k, (sel, msg) in REPLIES.items()})
