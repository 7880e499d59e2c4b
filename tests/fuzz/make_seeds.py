#!/usr/bin/env python3
"""Writes the hand-made seed inputs of every fuzz target into corpus/<target>/.

Each seed is a small valid message or a known edge case, named for what it is;
rerunning rewrites them (other files in the corpus, such as inputs merged by
bench/fuzz or crash reproducers, are left alone). The input layout of each
target is described at the top of tests/fuzz/<target>_fuzz.cpp.

  tests/fuzz/make_seeds.py
"""

import gzip
import io
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def b(*parts):
    out = b""
    for p in parts:
        if isinstance(p, int):
            out += bytes([p])
        elif isinstance(p, str):
            out += p.encode("latin-1")
        elif isinstance(p, (list, tuple)):
            out += bytes(p)
        else:
            out += p
    return out


def socks4(cmd, port, ip, userid=b"", host=None):
    out = b(4, cmd, struct.pack(">H", port), ip, userid, 0)
    if host is not None:
        out += b(host, 0)
    return out


def s5addr(kind, host, port):
    if kind == "v4":
        return b(1, host, struct.pack(">H", port))
    if kind == "v6":
        return b(4, host, struct.pack(">H", port))
    return b(3, len(host), host, struct.pack(">H", port))


V6 = [0x20, 0x01, 0x0D, 0xB8] + [0] * 11 + [1]
GREET = b(5, 1, 0)
GREET_PW = b(5, 2, 0, 2)
AUTH = b(1, 4, "user", 4, "pass")
REQ_V4 = b(5, 1, 0, s5addr("v4", [127, 0, 0, 1], 80))
REQ_NAME = b(5, 1, 0, s5addr("name", "example.org", 443))
REQ_V6 = b(5, 1, 0, s5addr("v6", V6, 443))

CONNECT = "CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n"
CONNECT_AUTH = ("CONNECT 192.0.2.1:80 HTTP/1.1\r\nHost: 192.0.2.1:80\r\n"
                "Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n")


def raw_deflate(data, level=6):
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def gzip_named(data):
    buf = io.BytesIO()
    with gzip.GzipFile(filename="body.lua", mode="wb", fileobj=buf, mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def http_post(path, body, headers=""):
    return b("POST %s HTTP/1.1\r\nHost: api\r\n%sContent-Length: %d\r\n\r\n" %
             (path, headers, len(body)), body)


PP2_SIG = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

RPC_TYPE = "Content-Type: application/x-neosocksd-rpc; version=1\r\n"

SEEDS = {
    "socks4": {
        "connect_ipv4": socks4(1, 80, [127, 0, 0, 1], b"bob"),
        "connect_no_userid": socks4(1, 443, [192, 0, 2, 1]),
        "connect_4a_name": socks4(1, 8080, [0, 0, 0, 1], b"", b"example.org"),
        "connect_4a_numeric": socks4(1, 80, [0, 0, 0, 9], b"u", b"192.0.2.7"),
        "connect_4a_ipv6": socks4(1, 80, [0, 0, 0, 1], b"", b"2001:db8::1"),
        "connect_4a_empty_host": socks4(1, 80, [0, 0, 0, 1], b"", b""),
        "connect_4a_bad_host": socks4(1, 80, [0, 0, 0, 1], b"", b"exa mple"),
        "bind": socks4(2, 21, [10, 0, 0, 1], b"ftp"),
        "bad_command": socks4(3, 21, [10, 0, 0, 1]),
        "userid_255": socks4(1, 80, [1, 2, 3, 4], b"a" * 255),
        "userid_too_long": b(4, 1, 0, 80, 1, 2, 3, 4, b"a" * 256),
        "connect_with_data": socks4(1, 80, [127, 0, 0, 1]) + b"GET / HTTP/1.0\r\n\r\n",
        "reply_granted": b(0, 0x5A, 0, 0, 0, 0, 0, 0),
        "reply_rejected_v4": b(4, 0x5B, 0x1F, 0x90, 10, 0, 0, 1),
    },
    "socks5": {
        "greeting_noauth": GREET,
        "greeting_password": GREET_PW,
        "greeting_no_methods": b(5, 0),
        "greeting_255": b(5, 255, list(range(255))),
        "auth": AUTH,
        "auth_empty_password": b(1, 4, "user", 0),
        "auth_empty_user": b(1, 0, 0),
        "request_ipv4": REQ_V4,
        "request_name": REQ_NAME,
        "request_ipv6": REQ_V6,
        "request_numeric_name": b(5, 1, 0, s5addr("name", "10.1.2.3", 22)),
        "request_v6_name": b(5, 1, 0, s5addr("name", "::1", 22)),
        "request_numeric_name_nul": b(5, 1, 0, s5addr("name", "10.0.0.1\0x", 80)),
        "request_bad_name": b(5, 1, 0, s5addr("name", "a/b", 22)),
        "request_empty_name": b(5, 1, 0, 3, 0, 0, 80),
        "request_udp": b(5, 3, 0, s5addr("v4", [0, 0, 0, 0], 0)),
        "request_bad_atyp": b(5, 1, 0, 2, 1, 2, 3, 4, 0, 80),
        "request_bad_command": b(5, 9, 0, s5addr("v4", [1, 1, 1, 1], 53)),
        "address_name_255": s5addr("name", "a" * 255, 1),
        "method_selection": b(5, 2),
        "method_refused": b(5, 0xFF),
        "auth_reply_ok": b(1, 0),
        "auth_reply_v5_fail": b(5, 1),
        "reply_ok": b(5, 0, 0, s5addr("v4", [0, 0, 0, 0], 0)),
        "reply_refused_v6": b(5, 5, 0, s5addr("v6", V6, 1080)),
        "reply_name": b(5, 0, 0, s5addr("name", "bound.example", 1080)),
    },
    # socks5_udp: one whole datagram (RSV FRAG ATYP ADDR PORT DATA).
    "socks5_udp": {
        "ipv4_dns": b(0, 0, 0, s5addr("v4", [127, 0, 0, 1], 53), "\x12\x34\x01\x00"),
        "ipv6_empty_payload": b(0, 0, 0, s5addr("v6", V6, 443)),
        "name": b(0, 0, 0, s5addr("name", "example.org", 7), "ping"),
        "name_255": b(0, 0, 0, s5addr("name", "a" * 255, 7)),
        "numeric_name": b(0, 0, 0, s5addr("name", "10.0.0.1", 7)),
        "fragment": b(0, 0, 0x81, s5addr("v4", [1, 2, 3, 4], 9), "x"),
        "bad_atyp": b(0, 0, 0, 9, 1, 2, 3, 4, 0, 1),
        "empty_name": b(0, 0, 0, 3, 0, 0, 1),
        "short": b(0, 0, 0, 1, 127, 0),
        "empty": "",
    },
    # http_forward: one option byte (bit 0: the response answers HEAD), then a
    # request or response head and body bytes.
    "http_forward": {
        "get_absolute": "\x00GET http://example.org:8080/a?b HTTP/1.1\r\nHost: x\r\n"
                        "Proxy-Connection: keep-alive\r\nConnection: X-A\r\nX-A: 1\r\n\r\n",
        "post_length": "\x00POST http://[::1]/ HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET",
        "post_chunked": "\x00POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                        "5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nnext",
        "te_and_cl": "\x00POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                     "Content-Length: 3\r\n\r\n0\r\n\r\n",
        "duplicate_cl": "\x00POST http://a/ HTTP/1.1\r\nContent-Length: 3\r\n"
                        "Content-Length: 3\r\n\r\nabc",
        "upgrade": "\x00GET http://a/ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        "origin_form": "\x00GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "response_chunked": "\x00HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                            "Connection: close, X-H\r\nX-H: 1\r\n\r\n1a\r\n" + "x" * 26 +
                            "\r\n0\r\n\r\n",
        "response_head": "\x01HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
        "response_close": "\x00HTTP/1.0 200 OK\r\n\r\nuntil close",
        "response_101": "\x00HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\n\r\nframes",
        "response_304": "\x00HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        "chunk_bare_lf": "\x005\nhello\r\n0\r\n\r\n",
        "chunk_huge": "\x00ffffffffffffffff\r\nabc",
    },
    "http": {
        "connect": CONNECT,
        "connect_auth": CONNECT_AUTH,
        "get_http10": "GET /stats?q=1 HTTP/1.0\r\n\r\n",
        "post_content_length": "POST /ruleset/rpcall HTTP/1.1\r\n" + RPC_TYPE +
                               "Content-Length: 10, 10\r\nContent-Length: 10\r\n\r\n0123456789",
        "leading_empty_lines": "\r\n\n\r\nGET / HTTP/1.1\r\n\r\n",
        "bare_lf": "GET / HTTP/1.1\nHost: x\n\n",
        "obs_fold": "GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n",
        "space_before_colon": "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        "http2": "GET / HTTP/2.0\r\n\r\n",
        "double_space": "GET  / HTTP/1.1\r\n\r\n",
        "ows_and_obs_text": "GET / HTTP/1.1\r\nX-Empty:\r\nX-Text: \t caf\xe9 \t\r\n\r\n",
        "response_200": "HTTP/1.1 200 Connection established\r\n\r\ntunnel",
        "response_no_reason": "HTTP/1.0 200\r\n\r\n",
        "response_407": "HTTP/1.1 407 Proxy Authentication Required\r\n"
                        "Proxy-Authenticate: Basic realm=\"rulesocks\"\r\nContent-Length: 0\r\n\r\n",
        "response_bad_status": "HTTP/1.1 099 Too Low\r\n\r\n",
        "content_length_max": "18446744073709551615",
        "content_length_overflow": "18446744073709551616",
        "content_length_leading_zeros": "0" * 35 + "42",
        "base64": "dXNlcjpwYXNz",
        "base64_bad_padding": "dXNlcjpwYXN=",
        "basic_auth": "basic  dXNlcjpwOmFzcw==",
    },
    "proxy_uri": {
        "socks5_v6_auth": "socks5://user:p%40ss@[2001:db8::1]:1080",
        "chain": "socks4a://proxy.lan:1080,http://10.0.0.1:3128",
        "socks5h_slash": "socks5h://127.0.0.1:1080/",
        "http_user_only": "HTTP://u@example.org:8080",
        "socks4_user": "socks4://user@1.2.3.4:1",
        "socks4_password": "socks4a://user:pw@1.2.3.4:1",
        "spaces": " socks5://a:1 ,  socks5://b:2 ",
        "empty_entry": "socks5://a:1,,socks5://b:2",
        "port_zero": "socks5://u:p@h:0",
        "unterminated_v6": "socks5://[::1:80",
        "unbracketed_v6": "socks5://::1:80",
        "at_in_password": "http://u:a@b@host:3128",
        "bad_escape": "http://u%4:p@host:3128",
        "path": "http://host:3128/path?x",
        "address_name": "example.org:80",
        "address_v6": "[::ffff:1.2.3.4]:80",
        "address_v4": "1.2.3.4:65535",
        "address_bracketed_name": "[example.org]:80",
    },
    "frontend": {
        "socks5_connect": b(0, GREET, REQ_NAME),
        "socks5_password_pipelined": b(2, GREET_PW, AUTH, REQ_V6, "early data"),
        "socks5_auth_required_noauth": b(1, GREET),
        "socks5_auth_required": b(1, GREET_PW, AUTH, REQ_V4),
        "socks5_bad_request": b(0, GREET, 5, 1, 0, 7),
        "socks5_udp": b(0, GREET, 5, 3, 0, s5addr("v4", [0, 0, 0, 0], 0)),
        "socks4_connect": b(0, socks4(1, 80, [127, 0, 0, 1], b"bob")),
        "socks4a_connect": b(0, socks4(1, 80, [0, 0, 0, 1], b"", b"example.org"), "data"),
        "socks4_auth_required": b(1, socks4(1, 80, [127, 0, 0, 1])),
        "http_connect": b(0, CONNECT, "tunnel data"),
        "http_connect_auth": b(1, CONNECT_AUTH),
        "http_listener_get": b(4, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        "http_bad_target": b(0, "CONNECT example.org HTTP/1.1\r\n\r\n"),
        "http_bad_auth": b(0, "CONNECT a:1 HTTP/1.1\r\nProxy-Authorization: Bearer x\r\n\r\n"),
        "unknown_protocol": b(0, 0x16, 3, 1, 0, 0x10),
    },
    "hop": {
        "socks4a_granted": b(0x00, 0, 0x5A, 0, 0, 0, 0, 0, 0, "data"),
        "socks4a_rejected": b(0x10, 0, 0x5B, 0, 0, 0, 0, 0, 0),
        "socks5_noauth": b(0x01, 5, 0, 5, 0, 0, s5addr("v4", [0, 0, 0, 0], 0)),
        "socks5_password": b(0x15, 5, 2, 1, 0, 5, 0, 0, s5addr("name", "example.org", 80), "x"),
        "socks5_auth_failed": b(0x05, 5, 2, 1, 1),
        "socks5_password_unoffered": b(0x01, 5, 2),
        "socks5_refused_method": b(0x05, 5, 0xFF),
        "socks5_host_unreachable": b(0x09, 5, 0, 5, 4, 0, s5addr("v6", V6, 443)),
        "socks5_bad_reply_atyp": b(0x01, 5, 0, 5, 0, 0, 9),
        "http_200": b(0x02, "HTTP/1.1 200 Connection established\r\n\r\nhello"),
        "http_407": b(0x06, "HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"),
        "http_504_v6": b(0x0A, "HTTP/1.0 504 Gateway Timeout\r\nContent-Length: 0\r\n\r\n"),
        "http_garbage": b(0x12, "SSH-2.0-OpenSSH\r\n"),
        # bit 7 + bits 3-4: 0.0.0.5, IPv4-mapped IPv6, a 255-byte name, 0.0.0.255
        "socks4a_marker_target_as_name": b(0x80, 0, 0x5A, 0, 0, 0, 0, 0, 0),
        "socks4a_ipv6_target_as_name": b(0x08, 0, 0x5A, 0, 0, 0, 0, 0, 0, "data"),
        "socks4a_mapped_v6_user": b(0x8C, 0, 0x5B, 0, 0, 0, 0, 0, 0),
        "socks4a_user_at_limit": b(0x24 | 0x98, 0, 0x5A, 0, 0, 0, 0, 0, 0),
        "socks4a_user_over_limit": b(0x44, 0, 0x5A, 0, 0, 0, 0, 0, 0),
        "socks4a_user_with_nul": b(0x64 | 0x80, 0, 0x5A, 0, 0, 0, 0, 0, 0),
        "socks5_credentials_at_limit": b(0x25, 5, 2, 1, 0, 5, 0, 0, s5addr("v4", [0, 0, 0, 5], 1)),
        "socks5_user_over_limit": b(0x45, 5, 2, 1, 0),
        "socks5_password_over_limit": b(0x65, 5, 2),
        "socks5_over_limit_but_noauth": b(0x45 | 0x98, 5, 0, 5, 0, 0, s5addr("v4", [0, 0, 0, 0], 0)),
        "http_user_with_colon": b(0x66, "HTTP/1.1 200 OK\r\n\r\n"),
        "http_long_name_target": b(0x92, "HTTP/1.1 200 Connection established\r\n\r\n"),
    },
    "chunked": {
        "simple": b(20, "5\r\nhello\r\n0\r\n\r\n"),
        "extension_trailer": b(20, "3;ext=1\r\nabc\r\n0;last\r\nX-Trailer: y\r\n\r\nnext"),
        "bare_lf": b(20, "5\nhello\n6\n world\n0\n\n"),
        "too_large": b(2, "5\r\nhello\r\n0\r\n\r\n"),
        "size_overflow": b(20, "1ffffffffffffffff\r\n"),
        "size_max": b(22, "fffffffffffffff\r\n"),
        "empty_body": b(0, "0\r\n\r\n"),
        "data_not_followed_by_crlf": b(20, "5\r\nhelloX\r\n"),
        "bad_size": b(20, "x\r\n"),
        "control_in_extension": b(20, "1;\x01\r\na\r\n0\r\n\r\n"),
        "trailer_without_colon": b(20, "0\r\nbad\r\n\r\n"),
        "upper_hex_spaces": b(20, "A \t;x\r\n0123456789\r\n0\r\n\r\n"),
    },
    "inflate": {
        "zlib": b(0x00, zlib.compress(b"hello world " * 20)),
        "gzip_named": b(0x0A, gzip_named(b"return true, 'hello'\n" * 3)),
        "gzip_two_members": b(0x01, gzip.compress(b"abc", mtime=0) + gzip.compress(b"def", mtime=0)),
        "raw_deflate": b(0x05, raw_deflate(b"raw deflate data " * 10)),
        "stored": b(0x01, zlib.compress(b"stored", 0)),
        "zlib_dictionary": b(0x06, (lambda c: c.compress(b"hello hello") + c.flush())(
            zlib.compressobj(6, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, b"hello"))),
        "truncated_gzip": b(0x06, gzip.compress(b"truncated " * 10, mtime=0)[:-3]),
        "trailing_garbage": b(0x06, zlib.compress(b"abc") + b"junk"),
        "over_limit": b(0x0A, zlib.compress(b"\0" * (1 << 20 | 1), 9)),
        "plain_text": b(0x0B, "not compressed at all"),
        "empty_zlib": b(0x00, zlib.compress(b"")),
    },
    "api_util": {
        "stats_query": "GET /stats?q=a%20b&x=1+2&&flag#frag HTTP/1.1\r\n"
                       "Accept-Encoding: gzip;q=0, deflate;q=0.5, *;q=0\r\n"
                       "Connection: keep-alive, Upgrade\r\n\r\n",
        "rpcall_type": "POST /ruleset/rpcall HTTP/1.1\r\n"
                       "Content-Type: application/x-neosocksd-rpc; version=\"1\"\r\n"
                       "Transfer-Encoding: gzip, chunked\r\nExpect: 100-continue\r\n\r\n",
        "absolute_target": "GET http://host:80/path?q HTTP/1.1\r\n"
                           "Content-Type: text/plain; charset=\"utf\\\"8\";;format=flowed\r\n\r\n",
        "accept_wildcard": "GET / HTTP/1.1\r\nAccept-Encoding: *\r\nAccept-Encoding: deflate;q=0.000\r\n\r\n",
        "media_type": "application/x-neosocksd-rpc;version=1",
        "bad_escape": "a=%zz&b=%4",
        "update_query": "/ruleset/update?module=libruleset&chunkname=%40x",
    },
    "api_conn": {
        "healthy": b(0, "GET /healthy HTTP/1.1\r\nHost: x\r\n\r\n"),
        "pipelined": b(2, "GET /healthy HTTP/1.1\r\n\r\nGET /stats HTTP/1.1\r\n"
                          "Accept-Encoding: deflate\r\n\r\nHEAD /stats HTTP/1.1\r\n\r\n"
                          "GET /healthy HTTP/1.1\r\n\r\n"),
        "stats_post_http10": b(1, "POST /stats?nobanner=1&server=0 HTTP/1.0\r\n\r\n"),
        "chunked_expect": b(2, "POST /ruleset/invoke HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                               "Expect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                               "GET /healthy HTTP/1.1\r\n\r\n"),
        "rpcall_deflate": b(0, http_post("/ruleset/rpcall", zlib.compress(b"return 1"),
                                         RPC_TYPE + "Content-Encoding: deflate\r\n")),
        "invoke_gzip": b(2, http_post("/ruleset/invoke", gzip.compress(b"print(1)", mtime=0),
                                      "Content-Encoding: gzip\r\n")),
        "corrupt_deflate": b(0, http_post("/ruleset/update", b"\x78\x9c\x00\x01",
                                          "Content-Encoding: deflate\r\n")),
        "deflate_bomb": b(0, http_post("/ruleset/update", zlib.compress(b"-" * 100000, 9),
                                       "Content-Encoding: deflate\r\n")),
        "conflicting_length": b(0, "POST /ruleset/update HTTP/1.1\r\nContent-Length: 5\r\n"
                                   "Content-Length: 6\r\n\r\nhello!"),
        "te_and_length": b(0, "POST /stats HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                              "Content-Length: 3\r\n\r\n"),
        "no_length": b(2, "POST /ruleset/rpcall HTTP/1.1\r\n\r\n"),
        "unknown_method": b(1, "BREW /coffee HTTP/1.1\r\n\r\n"),
        "close_then_more": b(2, "GET /stats HTTP/1.1\r\nConnection: close\r\n\r\n"
                                "GET /healthy HTTP/1.1\r\n\r\n"),
        "gc_and_bad_query": b(3, "POST /ruleset/gc HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
                                 "GET /stats?q=%zz HTTP/1.1\r\n\r\n"),
        "incomplete": b(1, "GET /healthy HTTP/1.1\r\nHost"),
        "bad_version": b(0, "GET / HTTP/1.2\r\n\r\n"),
    },
    "rpc_reply": {
        "ok_values": "return true,1,-2.5,\"a\\0b\",{1,2,[\"k\"]={x=1}},nil",
        "marshal_specials": "return true,0x8000000000000000,(0/0),1e+1000,-1e+1000,-0.0,"
                            "{[true]=1,[1.5]=2,[-1]=3}",
        "error": "return false,\"ruleset: attempt to call a nil value\"",
        "string_escapes": "return true,\"\\x00\\xff\\n\\r\\t\\\"\\\\\"",
        "table_keys": "return true,{[{}]=1,[{}]=2}",
        "deep": "return true," + "{" * 150 + "}" * 150,
        "runtime_error": "return nil .. 1",
        "syntax_error": "return {",
        "function": "return function() end",
        "loop": "while true do end",
        "string_method": "return (\"ab\"):rep(3)",
        "binary_chunk": b(0x1B, "Lua", 0x54, 0),
        "empty": "",
    },
    "proxy_protocol": {
        "v1_tcp4": "PROXY TCP4 192.0.2.7 198.51.100.1 56324 1080\r\nGET / HTTP/1.1\r\n",
        "v1_tcp6": "PROXY TCP6 2001:db8::7 ::1 65535 443\r\n",
        "v1_unknown": "PROXY UNKNOWN\r\n",
        "v1_bare_lf": "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        "v1_long": "PROXY UNKNOWN " + "x" * 100 + "\r\n",
        "v2_tcp4_tlv": b(PP2_SIG, 0x21, 0x11, 0, 21, [192, 0, 2, 7, 127, 0, 0, 1, 0xdc, 4, 4, 0x38],
                         [1, 0, 2], "h2", [4, 0, 1, 0], 5, 1, 0),
        "v2_tcp6": b(PP2_SIG, 0x21, 0x21, 0, 36, [0x20, 1, 0xd, 0xb8] + [0] * 12, [0] * 15 + [1],
                     0x12, 0x34, 0, 80),
        "v2_local": b(PP2_SIG, 0x20, 0, 0, 0),
        "v2_unix": b(PP2_SIG, 0x21, 0x31, 0, 216, [0] * 216),
        "v2_short_family": b(PP2_SIG, 0x21, 0x21, 0, 12, [0] * 12),
        "v2_too_long": b(PP2_SIG, 0x21, 0x11, 0x10, 0x01),
        "socks5_not_header": b(5, 1, 0),
    },
}


def main():
    for target, seeds in SEEDS.items():
        d = os.path.join(HERE, "corpus", target)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            if isinstance(data, str):
                data = data.encode("latin-1")
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
    total = sum(len(d) if isinstance(d, bytes) else len(d.encode("latin-1"))
                for seeds in SEEDS.values() for d in seeds.values())
    print("wrote %d seeds, %d bytes" % (sum(len(s) for s in SEEDS.values()), total))


if __name__ == "__main__":
    main()
