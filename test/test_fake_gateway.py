#!/usr/bin/python3
"""
test_fake_gateway.py -- self-test for test/fake_gateway.py.

  /usr/bin/python3 test/test_fake_gateway.py

(a) Reproduces test vectors B (cancelPayment) and C (inquiryPayment)
    (test/vectors/, see its README.md) with the gateway's own
    signing/verification helpers.
(b) Starts the gateway in a subprocess with a throw-away CA and server
    certificate made by the openssl CLI, and talks to it over HTTPS.

Uses only unittest, the stdlib and "cryptography".
"""

import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import fake_gateway as fg  # noqa: E402
import gzip  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402

PATH = fg.DEFAULT_PATH
INQUIRY_PATH = fg.DEFAULT_INQUIRY_PATH

# ---- vector B: test/vectors/ (see test/vectors/README.md) ----
VECTORS = os.path.join(HERE, "vectors")
with open(os.path.join(VECTORS, "vector_b.json"), encoding="utf-8") as _f:
    _VB = json.load(_f)
B_CLIENT_ID = _VB["client_id"]
B1_TIME = _VB["b1_request"]["request_time"]
B1_BODY = _VB["b1_request"]["body"]
B1_SHA256 = _VB["b1_request"]["content_sha256"]
B1_LEN = _VB["b1_request"]["content_length"]
B1_HEADER = _VB["b1_request"]["signature_header"]
B2_TIME = _VB["b2_response"]["response_time"]
B2_BODY = _VB["b2_response"]["body"]
B2_SHA256 = _VB["b2_response"]["content_sha256"]
B2_LEN = _VB["b2_response"]["content_length"]
B2_SIGNATURE = _VB["b2_response"]["signature_value"]


def vector_b_keys():
    """(private, public) key objects of vector B, read from test/vectors/."""
    with open(os.path.join(VECTORS, "vector_b_private.pem"), "rb") as f:
        priv = serialization.load_pem_private_key(f.read(), None)
    with open(os.path.join(VECTORS, "vector_b_public.pem"), "rb") as f:
        pub = serialization.load_pem_public_key(f.read())
    return priv, pub


class VectorB(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.priv, cls.pub = vector_b_keys()

    def test_b1_request_signing(self):
        content = fg.content_to_sign(PATH, B_CLIENT_ID, B1_TIME, B1_BODY)
        self.assertEqual(len(content), B1_LEN)
        self.assertEqual(hashlib.sha256(content).hexdigest(), B1_SHA256)
        header = fg.signature_header(fg.sign_b64(self.priv, content))
        self.assertEqual(header, B1_HEADER)
        # ...and the gateway's request-side parser accepts it.
        sig = fg.decode_signature_value(fg.parse_signature_header(header)["signature"])
        self.assertTrue(fg.verify(self.pub, content, sig))

    def test_b2_response_verification(self):
        content = fg.content_to_sign(PATH, B_CLIENT_ID, B2_TIME, B2_BODY)
        self.assertEqual(len(content), B2_LEN)
        self.assertEqual(hashlib.sha256(content).hexdigest(), B2_SHA256)
        sig = fg.decode_signature_value(B2_SIGNATURE)
        self.assertTrue(fg.verify(self.pub, content, sig))
        self.assertFalse(fg.verify(self.pub, content + b" ", sig))
        # Lowercase hex must decode to the same bytes.
        self.assertEqual(fg.decode_signature_value(B2_SIGNATURE.replace("%2B", "%2b")), sig)


# ---- vector C: inquiryPayment with vector B's keys (test/vectors/README.md) ----
with open(os.path.join(VECTORS, "vector_c.json"), encoding="utf-8") as _f:
    _VC = json.load(_f)


class VectorC(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.priv, cls.pub = vector_b_keys()

    def test_c1_request_signing(self):
        c1 = _VC["c1_request"]
        self.assertEqual(_VC["path"], INQUIRY_PATH)
        content = fg.content_to_sign(INQUIRY_PATH, _VC["client_id"], c1["request_time"],
                                     c1["body"])
        self.assertEqual(len(content), c1["content_length"])
        self.assertEqual(hashlib.sha256(content).hexdigest(), c1["content_sha256"])
        self.assertEqual(fg.signature_header(fg.sign_b64(self.priv, content)),
                         c1["signature_header"])
        # the same request signed over the cancel path is another signature
        other = fg.content_to_sign(PATH, _VC["client_id"], c1["request_time"], c1["body"])
        self.assertNotEqual(fg.signature_header(fg.sign_b64(self.priv, other)),
                            c1["signature_header"])

    def test_c2_response_verification(self):
        c2 = _VC["c2_response"]
        content = fg.content_to_sign(INQUIRY_PATH, _VC["client_id"], c2["response_time"],
                                     c2["body"])
        self.assertEqual(len(content), c2["content_length"])
        self.assertEqual(hashlib.sha256(content).hexdigest(), c2["content_sha256"])
        sig = fg.decode_signature_value(c2["signature_value"])
        self.assertTrue(fg.verify(self.pub, content, sig))
        wrong_path = fg.content_to_sign(PATH, _VC["client_id"], c2["response_time"],
                                        c2["body"])
        self.assertFalse(fg.verify(self.pub, wrong_path, sig))
        body = json.loads(c2["body"])
        want = c2["payment"]
        self.assertEqual((body["paymentResult"]["resultStatus"],
                          body["paymentResult"]["resultCode"]), (want["status"], want["code"]))
        self.assertEqual(body["paymentId"], want["payment_id"])
        self.assertEqual(body["paymentAmount"], {"currency": want["currency"],
                                                 "value": str(want["value_minor_units"])})


def _run(*cmd, cwd):
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def _write_key(path, key, fmt):
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, fmt,
                                  serialization.NoEncryption()))


class LiveGateway(unittest.TestCase):
    CLIENT_ID = "SANDBOX_TEST_CLIENT_01"

    @classmethod
    def setUpClass(cls):
        cls.dir = d = tempfile.mkdtemp(prefix="fake_gateway_test_")
        # Throw-away CA and server certificate for 127.0.0.1 / localhost.
        _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=fake-gateway-test-ca", "-keyout", "ca.key", "-out", "ca.crt",
             cwd=d)
        _run("openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes",
             "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr",
             cwd=d)
        with open(os.path.join(d, "ext.cnf"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt",
             "-CAkey", "ca.key", "-set_serial", "1", "-days", "2",
             "-extfile", "ext.cnf", "-out", "server.crt", cwd=d)
        # Client key pair (PKCS#8) and gateway key pair (PKCS#1 on purpose).
        cls.client_key = rsa.generate_private_key(65537, 2048)
        cls.gateway_key = rsa.generate_private_key(65537, 2048)
        cls.gateway_pub = cls.gateway_key.public_key()
        _write_key(os.path.join(d, "gateway_priv.pem"), cls.gateway_key,
                   serialization.PrivateFormat.TraditionalOpenSSL)
        with open(os.path.join(d, "client_pub.pem"), "wb") as f:
            f.write(cls.client_key.public_key().public_bytes(
                serialization.Encoding.PEM,
                serialization.PublicFormat.SubjectPublicKeyInfo))

        cls.log = os.path.join(d, "requests.jsonl")
        portfile = os.path.join(d, "port")
        cls.pidfile = os.path.join(d, "pid")
        start = time.monotonic()
        cls.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "fake_gateway.py"),
             "--host", "127.0.0.1", "--port", "0", "--portfile", portfile,
             "--cert", os.path.join(d, "server.crt"),
             "--key", os.path.join(d, "server.key"),
             "--client-id", cls.CLIENT_ID,
             "--client-pubkey", os.path.join(d, "client_pub.pem"),
             "--sign-key", os.path.join(d, "gateway_priv.pem"),
             "--log", cls.log, "--path", PATH, "--pidfile", cls.pidfile,
             "--alt-listener", "alt", os.path.join(d, "server.crt"),
             os.path.join(d, "server.key"), "--silent-listener"])
        while not os.path.exists(portfile):
            if cls.proc.poll() is not None or time.monotonic() - start > 5:
                cls.tearDownClass()
                raise RuntimeError("fake gateway did not start")
            time.sleep(0.01)
        cls.startup = time.monotonic() - start
        with open(portfile) as f:
            cls.port = int(f.read())
        with open(portfile + ".alt") as f:
            cls.alt_port = int(f.read())
        with open(portfile + ".silent") as f:
            cls.silent_port = int(f.read())
        cls.ctx = ssl.create_default_context(cafile=os.path.join(d, "ca.crt"))

    @classmethod
    def tearDownClass(cls):
        if cls.proc.poll() is None:
            cls.proc.send_signal(signal.SIGTERM)
        try:
            cls.rc = cls.proc.wait(5)
        except subprocess.TimeoutExpired:
            cls.proc.kill()
            cls.proc.wait()
            cls.rc = None
        shutil.rmtree(cls.dir, ignore_errors=True)
        if cls.rc != 0:
            raise AssertionError("gateway exit status %r on SIGTERM" % cls.rc)

    # -- helpers --------------------------------------------------------------

    def connect(self, port=None, timeout=10):
        return http.client.HTTPSConnection("127.0.0.1", port or self.port,
                                           context=self.ctx, timeout=timeout)

    def call(self, body, conn=None, key=None, client_id=None, tamper=False,
             content_type=fg.JSON_TYPE, path=PATH, signed_path=None):
        """POST a signed request (signed over signed_path, by default the
        path called); returns (status, headers, raw body)."""
        body = body.encode() if isinstance(body, str) else body
        client_id = client_id or self.CLIENT_ID
        rtime = fg.response_time_now()
        b64 = fg.sign_b64(key or self.client_key,
                          fg.content_to_sign(signed_path or path, client_id, rtime, body))
        headers = {"Content-Type": content_type, "Client-Id": client_id,
                   "Request-Time": rtime, "Signature": fg.signature_header(b64)}
        own = conn is None
        conn = conn or self.connect()
        try:
            conn.request("POST", path, body=body + (b" " if tamper else b""),
                         headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            if own:
                conn.close()

    def request_id(self, ident):
        return json.dumps({"paymentRequestId": ident}, separators=(",", ":"))

    def assert_signed(self, headers, body, iso_time=True, path=PATH):
        sig_header = headers["signature"]        # lookups are case-insensitive
        self.assertIsNotNone(sig_header)
        if iso_time:
            self.assertRegex(headers["response-time"],
                             r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00$")
        self.assertEqual(headers["client-id"], self.CLIENT_ID)
        sig = fg.decode_signature_value(fg.parse_signature_header(sig_header)["signature"])
        content = fg.content_to_sign(path, headers["client-id"],
                                     headers["response-time"], body)
        self.assertTrue(fg.verify(self.gateway_pub, content, sig), "bad response signature")

    def raw_exchange(self, ident, port=None):
        """Send a signed request over a bare TLS socket and return
        (bytes received, seconds to the first byte, seconds to the end)."""
        body = self.request_id(ident).encode()
        rtime = fg.response_time_now()
        b64 = fg.sign_b64(self.client_key,
                          fg.content_to_sign(PATH, self.CLIENT_ID, rtime, body))
        req = ("POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: %s\r\n"
               "Client-Id: %s\r\nRequest-Time: %s\r\nSignature: %s\r\n"
               "Content-Length: %d\r\n\r\n" % (
                   PATH, fg.JSON_TYPE, self.CLIENT_ID, rtime,
                   fg.signature_header(b64), len(body))).encode() + body
        sock = socket.create_connection(("127.0.0.1", port or self.port), timeout=10)
        with self.ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            start = time.monotonic()
            tls.sendall(req)
            chunks, first = [], None
            while True:
                try:
                    data = tls.recv(65536)
                except (ConnectionError, ssl.SSLError):
                    break
                if not data:
                    break
                if first is None:
                    first = time.monotonic() - start
                chunks.append(data)
            return b"".join(chunks), first, time.monotonic() - start

    def assert_signed_s(self, ident, iso_time=True):
        status, headers, body = self.call(self.request_id(ident))
        self.assertEqual(status, 200)
        self.assert_signed(headers, body, iso_time)
        return headers, body

    def assert_result(self, body, status, code):
        result = json.loads(body)["result"]
        self.assertEqual((result["resultStatus"], result["resultCode"]), (status, code))

    # -- tests ----------------------------------------------------------------

    def test_startup(self):
        self.assertLess(self.startup, 2.0)
        with open(self.pidfile) as f:
            self.assertEqual(int(f.read()), self.proc.pid)

    def test_signed_success(self):
        status, headers, body = self.call(self.request_id("PR_OK_1"))
        self.assertEqual(status, 200)
        self.assert_signed(headers, body)
        self.assertEqual(body, b'{"acquirerId":"1022188000000000001","pspId":'
                         b'"1022172000000000001","result":{"resultCode":"SUCCESS",'
                         b'"resultMessage":"success.","resultStatus":"S"}}')

    def test_wrong_signature(self):
        other = rsa.generate_private_key(65537, 2048)
        for kwargs in ({"key": other}, {"tamper": True}):
            status, headers, body = self.call(self.request_id("PR_BADSIG"), **kwargs)
            self.assertEqual(status, 200)
            self.assert_result(body, "F", "INVALID_SIGNATURE")
            self.assertIsNone(headers["signature"])
            self.assertIsNone(headers["response-time"])

    def test_scripted_fail(self):
        status, headers, body = self.call(self.request_id("f-PROCESS_FAIL-1"))
        self.assertEqual(status, 200)
        self.assert_signed(headers, body)
        self.assert_result(body, "F", "PROCESS_FAIL")

    def test_seq_on_keepalive_connection(self):
        conn = self.connect()
        try:
            got = []
            for _ in range(3):
                status, headers, body = self.call(self.request_id("seq-U.S-x"), conn=conn)
                self.assertEqual(status, 200)
                self.assert_signed(headers, body)
                result = json.loads(body)["result"]
                got.append((result["resultStatus"], result["resultCode"]))
        finally:
            conn.close()
        self.assertEqual(got, [("U", "UNKNOWN_EXCEPTION"), ("S", "SUCCESS"),
                               ("S", "SUCCESS")])

    def test_header_and_body_checks(self):
        _, h, body = self.call(self.request_id("PR_CID"), client_id="SOMEONE_ELSE")
        self.assert_result(body, "F", "INVALID_CLIENT")
        _, h, body = self.call(self.request_id("PR_CT"), content_type="text/plain")
        self.assert_result(body, "F", "MEDIA_TYPE_NOT_ACCEPTABLE")
        _, h, body = self.call(self.request_id("PR_CT2"),
                               content_type="Application/JSON;charset=utf-8")
        self.assert_result(body, "S", "SUCCESS")
        _, h, body = self.call('{"paymentRequestId":"a","paymentId":"b"}')
        self.assert_signed(h, body)
        self.assert_result(body, "F", "PARAM_ILLEGAL")

    def test_spaced_and_reset(self):
        _, headers, body = self.call(self.request_id("spaced-1"))
        self.assertIn(", keyVersion=1, signature=", headers["signature"])
        self.assertRegex(headers["signature"], r"%(2b|2f|3d)")
        self.assertIn("signature", [k for k, _ in headers.items()])
        self.assert_signed(headers, body)
        with self.assertRaises((ConnectionError, ssl.SSLError)):
            self.call(self.request_id("reset-1"))

    # -- fault modes ----------------------------------------------------------

    def test_http_status_with_signed_success(self):
        for code in (201, 202, 429, 502, 503, 504):
            status, headers, body = self.call(self.request_id("http-%d-x" % code))
            self.assertEqual(status, code)
            self.assert_signed(headers, body)
            self.assert_result(body, "S", "SUCCESS")
        status, headers, body = self.call(self.request_id("http-204-x"))
        self.assertEqual((status, body), (204, b""))
        self.assert_signed(headers, body)

    def test_empty_and_gzip(self):
        status, headers, body = self.call(self.request_id("empty-x"))
        self.assertEqual((status, body), (200, b""))
        self.assert_signed(headers, body)
        status, headers, body = self.call(self.request_id("gzip-x"))
        self.assertEqual(headers["content-encoding"], "gzip")
        self.assert_signed(headers, body)          # over the compressed bytes
        self.assert_result(gzip.decompress(body), "S", "SUCCESS")

    def test_duplicated_headers(self):
        _, headers, body = self.call(self.request_id("dupsig-x"))
        sigs = headers.get_all("Signature")
        self.assertEqual(len(sigs), 2)
        self.assertEqual(sigs[0], sigs[1])
        self.assert_signed(headers, body)
        _, headers, body = self.call(self.request_id("dupsigbad-x"))
        sigs = headers.get_all("Signature")
        self.assertEqual(len(sigs), 2)
        self.assert_signed(headers, body)          # the first one verifies
        bogus = fg.decode_signature_value(fg.parse_signature_header(sigs[1])["signature"])
        self.assertFalse(fg.verify(self.gateway_pub, fg.content_to_sign(
            PATH, self.CLIENT_ID, headers["response-time"], body), bogus))
        _, headers, body = self.call(self.request_id("duptime-x"))
        times = headers.get_all("Response-Time")
        self.assertEqual(len(times), 2)
        self.assertNotEqual(times[0], times[1])
        self.assert_signed(headers, body)
        _, headers, body = self.call(self.request_id("dupclient-x"))
        self.assertEqual(headers.get_all("Client-Id"), [self.CLIENT_ID] * 2)
        self.assert_signed(headers, body)

    def test_signature_fields(self):
        headers, _ = self.assert_signed_s("keyversion-2-x")
        self.assertEqual(fg.parse_signature_header(headers["signature"])["keyVersion"], "2")
        headers, _ = self.assert_signed_s("algo-RSA512-x")
        self.assertEqual(fg.parse_signature_header(headers["signature"])["algorithm"],
                         "RSA512")

    def test_response_time_not_a_time(self):
        for kind, value in fg.BAD_TIMES.items():
            headers, _ = self.assert_signed_s("rtime-%s-x" % kind, iso_time=False)
            self.assertEqual(headers["response-time"], value)

    def test_zulu_time_and_trailer(self):
        headers, _ = self.assert_signed_s("zulutime-x", iso_time=False)
        self.assertEqual(headers["response-time"], "2025-01-15T02:30:01.250Z")
        raw, _, _ = self.raw_exchange("trailersig-x")
        head, _, rest = raw.partition(b"\r\n\r\n")
        self.assertIn(b"Transfer-Encoding: chunked", head)
        self.assertEqual(head.count(b"\nSignature: "), 1)
        # the last chunk, then the trailer with the second Signature
        self.assertRegex(rest, rb"\r\n0\r\nSignature: algorithm=RSA256,[^\r]*\r\n\r\n$")

    def test_typed_and_status(self):
        for kind, raw in fg.TYPED_BODIES.items():
            status, headers, body = self.call(self.request_id("typed-%s-x" % kind))
            self.assertEqual((status, body), (200, raw))
            self.assert_signed(headers, body)
            json.loads(body)
        for value in ("X", "s", ""):
            status, headers, body = self.call(self.request_id("rstatus-%s-x" % value))
            self.assert_signed(headers, body)
            self.assertEqual(json.loads(body)["result"]["resultStatus"], value)

    def test_stalls_and_cuts(self):
        raw, first, total = self.raw_exchange("headstall-1500-x")
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200"))
        self.assert_result(body, "S", "SUCCESS")
        self.assertLess(first, 1.0)
        self.assertGreaterEqual(total, 1.4)
        raw, first, total = self.raw_exchange("dribble-10-x")
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assert_result(body, "S", "SUCCESS")
        self.assertGreaterEqual(total, len(body) * 0.009)
        raw, _, _ = self.raw_exchange("cutbody-x")
        head, _, body = raw.partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        self.assertEqual(len(body), length // 2)

    def test_alt_and_silent_listeners(self):
        raw, _, _ = self.raw_exchange("PR_ALT", port=self.alt_port)
        self.assertTrue(raw.startswith(b"HTTP/1.1 200"))
        sock = socket.create_connection(("127.0.0.1", self.silent_port), timeout=0.5)
        try:
            sock.sendall(b"\x16\x03\x01\x00\x05hello")
            with self.assertRaises(socket.timeout):
                sock.recv(1)
        finally:
            sock.close()

    def test_chaos_plans(self):
        random.seed(7)
        plans = [fg.plan_for("load-%d" % i, 1, chaos=0.2, chaos_stall_ms=1234)
                 for i in range(2000)]
        faults = [p for p in plans if p.outcome.startswith("chaos:")]
        self.assertTrue(300 < len(faults) < 500, len(faults))
        self.assertEqual({p.outcome.split(":")[1] for p in faults},
                         {"stall", "reset", "http500", "http503", "U", "unsigned-S",
                          "badsig"})
        self.assertTrue(all(p.delay_ms == 1234 for p in faults
                            if p.outcome.startswith("chaos:stall")))
        self.assertEqual({p.outcome for p in plans if p not in faults},
                         {"S", "F:PROCESS_FAIL"})
        # prefixes win over chaos, and without --chaos nothing is drawn
        self.assertEqual(fg.plan_for("f-X-1", 1, chaos=1.0).outcome, "F:X")
        self.assertEqual(fg.plan_for("load-1", 1).outcome, "S")

    def test_not_found(self):
        conn = self.connect()
        try:
            conn.request("GET", PATH)
            resp = conn.getresponse()
            self.assertEqual((resp.status, resp.read()), (404, b"not found\n"))
        finally:
            conn.close()

    # -- inquiryPayment ---------------------------------------------------------

    def inquire(self, ident, field="paymentRequestId", signed=True):
        """One inquiry; returns the parsed answer (its signature checked
        over the inquiry path when signed)."""
        status, headers, body = self.call(json.dumps({field: ident}, separators=(",", ":")),
                                          path=INQUIRY_PATH)
        self.assertEqual(status, 200)
        if signed:
            self.assert_signed(headers, body, path=INQUIRY_PATH)
        else:
            self.assertIsNone(headers["signature"])
        return json.loads(body)

    def payment(self, answer):
        pr = answer["paymentResult"]
        return pr["resultStatus"], pr["resultCode"]

    def test_inquiry_paid(self):
        for ident in ("PR_INQ_1", "paid-PR_INQ_2"):
            a = self.inquire(ident)
            self.assertEqual(a["result"]["resultStatus"], "S")
            self.assertEqual(self.payment(a), ("S", "SUCCESS"))
            self.assertEqual(a["paymentRequestId"], ident)
            self.assertRegex(a["paymentId"], r"^\d{28,32}$")
            self.assertEqual(a["paymentTime"], "2026-03-01T18:15:07+08:00")
            self.assertEqual(a["paymentAmount"], {"currency": "SGD", "value": "1250"})
        # asked by paymentId, the paymentId comes back
        a = self.inquire("2026000000000000000000000001", field="paymentId")
        self.assertEqual(a["paymentId"], "2026000000000000000000000001")
        self.assertEqual(self.payment(a), ("S", "SUCCESS"))

    def test_inquiry_signed_over_its_own_path(self):
        # a request signed over the cancel path is refused by the inquiry API
        status, headers, body = self.call(self.request_id("PR_INQ_WRONGPATH"),
                                          path=INQUIRY_PATH, signed_path=PATH)
        self.assert_result(body, "F", "INVALID_SIGNATURE")
        # and an inquiry answer does not verify over the cancel path
        status, headers, body = self.call(self.request_id("PR_INQ_3"), path=INQUIRY_PATH)
        self.assert_signed(headers, body, path=INQUIRY_PATH)
        with self.assertRaises(AssertionError):
            self.assert_signed(headers, body, path=PATH)

    def test_inquiry_failed_and_not_found(self):
        a = self.inquire("failed-USER_BALANCE_NOT_ENOUGH-1")
        self.assertEqual(self.payment(a), ("F", "USER_BALANCE_NOT_ENOUGH"))
        self.assertNotIn("paymentTime", a)
        a = self.inquire("notfound-1")
        self.assertEqual((a["result"]["resultStatus"], a["result"]["resultCode"]),
                         ("F", "ORDER_NOT_EXIST"))
        self.assertNotIn("paymentResult", a)
        a = self.inquire("prnotfound-1")
        self.assertEqual(self.payment(a), ("F", "ORDER_NOT_EXIST"))

    def test_inquiry_noecho(self):
        # a signed paid answer without the id asked about (and only that one)
        a = self.inquire("noecho-1")
        self.assertEqual(self.payment(a), ("S", "SUCCESS"))
        self.assertNotIn("paymentRequestId", a)
        self.assertIn("paymentId", a)
        a = self.inquire("noecho-2", field="paymentId")
        self.assertEqual(self.payment(a), ("S", "SUCCESS"))
        self.assertNotIn("paymentId", a)
        self.assertEqual(a["paymentRequestId"], "PR-noecho-2")

    def test_inquiry_later_paid(self):
        got = [self.payment(self.inquire("later-2-x")) for _ in range(4)]
        self.assertEqual(got, [("U", "PAYMENT_IN_PROCESS")] * 2 + [("S", "SUCCESS")] * 2)
        # inquiries are counted apart from cancels: U first for both
        status, headers, body = self.call(self.request_id("seq-U.S-apart"))
        self.assert_result(body, "U", "UNKNOWN_EXCEPTION")
        a = self.inquire("seq-U.S-apart")
        self.assertEqual(a["result"]["resultStatus"], "U")
        self.assertEqual(self.payment(self.inquire("seq-U.S-apart")), ("S", "SUCCESS"))

    def test_inquiry_in_process_until_cancelled(self):
        for _ in range(2):
            self.assertEqual(self.payment(self.inquire("inprocess-1")),
                             ("U", "PAYMENT_IN_PROCESS"))
        self.assert_signed_s("inprocess-1")      # cancelPayment answered S
        self.assertEqual(self.payment(self.inquire("inprocess-1")),
                         ("F", "ORDER_IS_CLOSED"))
        # a paid payment that was cancelled is closed too
        self.assert_signed_s("paid-cancelled")
        self.assertEqual(self.payment(self.inquire("paid-cancelled")),
                         ("F", "ORDER_IS_CLOSED"))

    def test_latency_prefix(self):
        # lat-MS-REST: REST's outcome MS ms later, for both APIs; the state
        # (counts, cancelled) is the whole id's
        t = time.monotonic()
        self.assertEqual(self.payment(self.inquire("lat-150-inprocess-L1")),
                         ("U", "PAYMENT_IN_PROCESS"))
        self.assertGreaterEqual(time.monotonic() - t, 0.15)
        self.assertEqual(self.payment(self.inquire("lat-150-later-1-L2")),
                         ("U", "PAYMENT_IN_PROCESS"))
        self.assertEqual(self.payment(self.inquire("lat-150-later-1-L2")), ("S", "SUCCESS"))
        self.assertEqual(self.payment(self.inquire("lat-0-failed-RISK_REJECT-L3")),
                         ("F", "RISK_REJECT"))
        t = time.monotonic()
        self.assert_signed_s("lat-150-inprocess-L1")      # cancelPayment answered S
        self.assertGreaterEqual(time.monotonic() - t, 0.15)
        self.assertEqual(self.payment(self.inquire("lat-150-inprocess-L1")),
                         ("F", "ORDER_IS_CLOSED"))
        status, _, body = self.call(json.dumps({"paymentRequestId": "lat-100-f-PROCESS_FAIL-L4"},
                                               separators=(",", ":")))
        self.assert_result(body, "F", "PROCESS_FAIL")

    def test_inquiry_unsigned_and_u(self):
        a = self.inquire("unsigned-S-1", signed=False)
        self.assertEqual(self.payment(a), ("S", "SUCCESS"))
        a = self.inquire("u-UNKNOWN_EXCEPTION-1")
        self.assertEqual((a["result"]["resultStatus"], a["result"]["resultCode"]),
                         ("U", "UNKNOWN_EXCEPTION"))
        self.assertNotIn("paymentResult", a)
        a = self.inquire("unsigned-U-REQUEST_TRAFFIC_EXCEED_LIMIT-1", signed=False)
        self.assertEqual(a["result"]["resultStatus"], "U")
        # a bad signature on an inquiry's paid answer
        status, headers, body = self.call(self.request_id("badsig-inq"), path=INQUIRY_PATH)
        self.assertEqual(self.payment(json.loads(body)), ("S", "SUCCESS"))
        with self.assertRaises(AssertionError):
            self.assert_signed(headers, body, path=INQUIRY_PATH)

    def test_inquiry_spoilt_answers(self):
        a = self.inquire("nopayresult-1")
        self.assertEqual(a["result"]["resultStatus"], "S")
        self.assertNotIn("paymentResult", a)
        a = self.inquire("otherpayment-1")
        self.assertEqual(a["paymentRequestId"], "otherpayment-1-other")
        self.assertEqual(self.inquire("ptyped-prstring-1")["paymentResult"], "S")
        self.assertEqual(self.payment(self.inquire("ptyped-prstatus-1")), ("X", "SUCCESS"))
        self.assertNotIn("resultCode", self.inquire("ptyped-prnocode-1")["paymentResult"])
        self.assertEqual(self.inquire("ptyped-timenum-1")["paymentTime"], 1)
        self.assertEqual(self.inquire("ptyped-badtime-1")["paymentTime"][:10], "2026-02-30")
        self.assertEqual(self.inquire("ptyped-amountnum-1")["paymentAmount"]["value"], 1250)
        self.assertEqual(self.inquire("ptyped-amountdot-1")["paymentAmount"]["value"], "12.50")
        self.assertNotIn("currency", self.inquire("ptyped-nocurrency-1")["paymentAmount"])

    def test_inquiry_faults_carry_a_paid_answer(self):
        # fault modes work on the inquiry path, around its paid answer
        status, headers, body = self.call(self.request_id("http-503-inq"), path=INQUIRY_PATH)
        self.assertEqual(status, 503)
        self.assert_signed(headers, body, path=INQUIRY_PATH)
        self.assertEqual(self.payment(json.loads(body)), ("S", "SUCCESS"))
        status, headers, body = self.call(self.request_id("keyversion-2-inq"), path=INQUIRY_PATH)
        self.assertIn("keyVersion=2", headers["signature"])

    def test_log(self):
        self.call(self.request_id("seq-F.S-log"))
        self.call(self.request_id("seq-F.S-log"))
        with open(self.log, encoding="utf-8") as f:
            lines = [json.loads(line) for line in f]
        mine = [e for e in lines if e["id"] == "seq-F.S-log"]
        self.assertEqual([(e["outcome"], e["count"]) for e in mine],
                         [("F:PROCESS_FAIL", 1), ("S", 2)])
        self.assertEqual({e["api"] for e in mine}, {"cancelPayment"})
        self.call(self.request_id("log-inq"), path=INQUIRY_PATH)
        with open(self.log, encoding="utf-8") as f:
            inq = [json.loads(line) for line in f if '"log-inq"' in line]
        self.assertEqual([(e["api"], e["path"], e["outcome"]) for e in inq],
                         [("inquiryPayment", INQUIRY_PATH, "paid")])
        e = mine[0]
        self.assertEqual(e["id_field"], "paymentRequestId")
        self.assertEqual(e["body"], '{"paymentRequestId":"seq-F.S-log"}')
        self.assertEqual(e["client_id"], self.CLIENT_ID)
        self.assertEqual(e["content_type"], fg.JSON_TYPE)
        self.assertTrue(e["signature_valid"])
        self.assertTrue(e["signature_header"].startswith("algorithm=RSA256,"))
        self.assertIsNotNone(e["request_time"])
        self.assertEqual(os.stat(self.log).st_mode & 0o777, 0o644)


if __name__ == "__main__":
    unittest.main(verbosity=2)
