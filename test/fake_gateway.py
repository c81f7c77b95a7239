#!/usr/bin/python3
r"""
fake_gateway.py -- a fake Alipay+ gateway for the extension's test rig.

It serves the Alipay+ (ACQP -> Alipay+) cancelPayment and inquiryPayment
APIs over HTTPS (--path, --inquiry-path), checks each request the way the
real gateway is specified to (Client-Id, Content-Type, RSA256 request
signature over the path called, body shape; see docs/protocol.md), and
answers with a scripted outcome picked by the prefix of the
paymentRequestId / paymentId.  The prefixes below apply to both APIs; an
inquiry's S answer also carries a paymentResult (S SUCCESS, the payment was
paid, unless an inquiry prefix below says otherwise), paymentId,
paymentRequestId, paymentAmount and, for a paid payment, paymentTime.

  (no prefix)            S SUCCESS, signed
  f-CODE-...             F CODE, signed          u-CODE-...   U CODE, signed
  slow-MS-...            sleep MS ms, then S     http500-...  HTTP 500, unsigned
  lat-MS-REST            a gateway MS ms away: sleep MS ms, then the outcome
                         of REST (any id below, both APIs; counts and the
                         cancelled state stay with the whole id)
  badjson-...            signed body that is not JSON
  redirect-...           HTTP 302 to the same path, unsigned (never to be followed)
  noresult-...           signed JSON without "result"
  unsigned-S-... / unsigned-F-CODE-... / unsigned-U-CODE-...   no signature
  badsig-...             S with a signature that does not verify
  halfsigned-...         S with Signature but no Response-Time
  otherclient-...        S signed for client OTHER_CLIENT_0001
  spaced-...             S, "a=b, c=d" header, lowercase hex and header names
  huge-...               S with a ~2 MiB body
  chunked-...            S with a ~2 MiB body sent chunked, no Content-Length
  reset-...              TCP reset instead of a response
  unsigned-otherclient-F-CODE-... / unsigned-otherclient-U-CODE-...
                         no signature, Client-Id OTHER_CLIENT_0001
  otherclientbytes-...   S signed for a Client-Id with bytes 0xff 0xfe 0x01
  casedsig-...           S, "algorithm = rsa256 , keyVersion = 1 , SIGNATURE = ..."
  ecc224-...             S, valid signature but "algorithm=ECC224"
  trailersig-...         S with a valid Signature header, the body chunked and
                         followed by a trailer with a second, bogus Signature
  zulutime-...           S signed with Response-Time 2025-01-15T02:30:01.250Z
  deepjson-...           signed S whose ignored field "deep" nests 100000 arrays
  escapes-...            signed F PROCESS_FAIL, resultMessage with \" \\ \u0041 and a
                         surrogate pair, next to a field nested 64 levels deep
  cutescape-...          signed body that ends inside a \u escape
  longmsg-...            signed F PROCESS_FAIL, a 2000-character resultMessage
                         with a line break and a tab
  unicode-...            signed F PROCESS_FAIL whose resultMessage holds
                         \u00e9, \u4e2d, \ud83d\ude00 escapes and a raw UTF-8 e-acute
  seq-T1.T2...-...       n-th request for the id gets token n (last repeats):
                         S, U (UNKNOWN_EXCEPTION), F (PROCESS_FAIL), R (reset),
                         E (HTTP 500), W (sleep 2000 ms, then S)

Fault modes (each answer validly signed unless said otherwise, so that only
the named fault is wrong):

  headstall-MS-...       status line and headers of an S answer, then MS ms of
                         silence, then the body
  dribble-MS-...         an S answer whose body goes out one byte every MS ms
  cutbody-...            an S answer whose connection closes half-way through
                         the body announced by Content-Length
  http-NNN-...           HTTP status NNN (429, 502, 201...) with a signed S body
                         (204 and 304: an empty body, signed)
  empty-...              HTTP 200, an empty body, signed over the empty body
  gzip-...               S body gzip-compressed, Content-Encoding: gzip (never
                         asked for), signed over the compressed bytes
  dupsig-...             S with the same valid Signature header twice
  dupsigbad-...          S with a valid Signature header, then a bogus one
  duptime-...            S with the signed Response-Time, then another one
  dupclient-...          S with our Client-Id header twice
  keyversion-N-...       S, validly signed, "keyVersion=N"
  algo-NAME-...          S, validly signed, "algorithm=NAME"
  rtime-KIND-...         S signed over a Response-Time that is not a time:
                         text, epoch (seconds), month13, notz (no offset),
                         feb29 (2025-02-29), offset16 (+16:00)
  typed-KIND-...         S whose field is of a wrong JSON type: statusbool,
                         statusarray, codenum, msgnum, msgnull, acqnum,
                         pspobj, resultstring, resultarray
  rstatus-X-...          a result with resultStatus X (any letters, or none:
                         "rstatus--..." sends "")

inquiryPayment outcomes (per id and API, requests are counted apart):

  (no prefix), paid-...  S, paymentResult S SUCCESS: paid
  failed-CODE-...        S, paymentResult F CODE: the payment failed
  later-N-...            S, paymentResult U PAYMENT_IN_PROCESS for the first N
                         inquiries, then paid
  inprocess-...          S, paymentResult U PAYMENT_IN_PROCESS, until the id is
                         cancelled
  notfound-...           F ORDER_NOT_EXIST (no paymentResult), signed
  prnotfound-...         S, paymentResult F ORDER_NOT_EXIST (some guides' place)
  f-CODE-..., u-CODE-... the inquiry's own result F / U CODE, signed
  unsigned-S-...         the paid answer without a signature
  nopayresult-...        signed S without a paymentResult
  otherpayment-...       signed paid answer about another payment (the id
                         asked about comes back changed)
  noecho-...             signed paid answer without the id asked about (no
                         paymentRequestId when asked by it, no paymentId when
                         asked by paymentId)
  ptyped-KIND-...        signed S whose payment fields are malformed:
                         prstring (paymentResult "S"), prstatus (status "X"),
                         prnocode, timenum (paymentTime 1), badtime
                         (2026-02-30T...), amountnum (value 1250),
                         amountdot (value "12.50"), nocurrency
  Any id whose cancelPayment was answered S (a cancelled payment) is then
  answered S, paymentResult F ORDER_IS_CLOSED, whatever its prefix (fault
  modes aside).

With --chaos P, an id without a prefix gets, with probability P, one of:
a stall of --chaos-stall-ms, a TCP reset, HTTP 500, HTTP 503 (signed S body),
U UNKNOWN_EXCEPTION, an unsigned S, a bad signature; otherwise S (or F
PROCESS_FAIL one time in 20).  The outcome drawn is logged.

--alt-listener NAME CERT KEY serves the same API on another port with
another certificate (its port goes to PORTFILE.NAME); --silent-listener
writes PORTFILE.silent, a port that accepts TCP connections and never
speaks (no TLS).

Every request is appended as one JSON line to the --log file.  It is written
independently of the extension and uses only the stdlib plus "cryptography".
The signing helpers below are also imported by test_fake_gateway.py.
"""

import argparse
import base64
import gzip
import hashlib
import json
import os
import random
import re
import signal
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import urllib.parse
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

DEFAULT_PATH = "/aps/api/v1/payments/cancelPayment"
DEFAULT_INQUIRY_PATH = "/aps/api/v1/payments/inquiryPayment"
PAYMENT_TIME = "2026-03-01T18:15:07+08:00"
PAYMENT_AMOUNT = {"currency": "SGD", "value": "1250"}
JSON_TYPE = "application/json; charset=UTF-8"
ACQUIRER_ID = "1022188000000000001"
PSP_ID = "1022172000000000001"
OTHER_CLIENT_ID = "OTHER_CLIENT_0001"

# requests being handled right now, across the server's threads: logged with
# each request ("inflight", itself included) to show a client's concurrency
INFLIGHT_LOCK = threading.Lock()
INFLIGHT = [0]
# a Client-Id that is not UTF-8 and holds a control character (sent as
# these bytes: http.server encodes header values as latin-1)
OTHER_CLIENT_BYTES = "OTHER\xff\xfe\x01X"
DEEP_LEVELS = 100000
UNICODE_MESSAGE = (b'caf\\u00e9 \\u4e2d \\ud83d\\ude00 raw ' +
                   "\u00e9".encode("utf-8"))
ID_FIELDS = ("paymentRequestId", "paymentId")
HUGE_PADDING = 2 * 1024 * 1024
UTC8 = timezone(timedelta(hours=8))

MESSAGES = {
    "SUCCESS": "success.",
    "PAYMENT_IN_PROCESS": "The payment is in process.",
    "ORDER_IS_CLOSED": "The order is closed.",
    "ORDER_NOT_EXIST": "The order does not exist.",
    "USER_BALANCE_NOT_ENOUGH": "The user balance is not enough.",
    "PROCESS_FAIL": "A general business failure occurred. Do not retry.",
    "UNKNOWN_EXCEPTION": "An API call failed for unknown reasons.",
    "PARAM_ILLEGAL": "Illegal parameters exist.",
    "INVALID_CLIENT": "The client is invalid.",
    "INVALID_SIGNATURE": "The signature is invalid.",
    "MEDIA_TYPE_NOT_ACCEPTABLE": "The media type is not acceptable.",
    "ACCESS_DENIED": "Access is denied.",
    "REQUEST_TRAFFIC_EXCEED_LIMIT": "The request traffic exceeds the limit.",
}


# --------------------------------------------------------------------------
# Signing helpers (docs/protocol.md, section 4); str arguments are encoded as UTF-8.
# --------------------------------------------------------------------------

def _b(x):
    return x if isinstance(x, bytes) else x.encode("utf-8")


def content_to_sign(path, client_id, timestamp, body):
    """'POST ' + path + LF + client_id + '.' + time + '.' + body, as bytes."""
    return (b"POST " + _b(path) + b"\n" + _b(client_id) + b"." +
            _b(timestamp) + b"." + _b(body))


def sign_b64(private_key, content):
    """RSASSA-PKCS1-v1_5 / SHA-256 signature as standard base64 text."""
    sig = private_key.sign(_b(content), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(sig).decode("ascii")


def verify(public_key, content, signature):
    """True if the raw signature bytes verify over content."""
    try:
        public_key.verify(signature, _b(content), padding.PKCS1v15(),
                          hashes.SHA256())
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def pct_encode(b64, lowercase_hex=False):
    """Percent-encode base64 text (+ / = become %2B %2F %3D)."""
    enc = urllib.parse.quote(b64, safe="")
    if lowercase_hex:
        enc = re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), enc)
    return enc


def signature_header(b64, key_version="1", spaced=False, lowercase_hex=False,
                     algorithm="RSA256"):
    """Build 'algorithm=RSA256,keyVersion=1,signature=<pct-encoded b64>'."""
    sep = ", " if spaced else ","
    return sep.join(["algorithm=" + algorithm, "keyVersion=" + key_version,
                     "signature=" + pct_encode(b64, lowercase_hex)])


def parse_signature_header(value):
    """Parse 'k=v, k=v' into a dict; split each pair at the first '='.
    Raises ValueError on an empty element, a pair without '=' or a
    repeated key."""
    params = {}
    for item in value.split(","):
        item = item.strip(" \t")
        key, eq, val = item.partition("=")
        if not eq or not key or key in params:
            raise ValueError("malformed Signature header")
        params[key] = val
    return params


def decode_signature_value(value):
    """Percent-decode (keeping '+' as '+') then strict standard base64."""
    return base64.b64decode(urllib.parse.unquote(value), validate=True)


def load_rsa_key(path, private):
    """PEM RSA key: private as PKCS#8 or PKCS#1, public as SPKI or PKCS#1."""
    with open(path, "rb") as f:
        pem = f.read()
    if private:
        key, want = serialization.load_pem_private_key(pem, None), rsa.RSAPrivateKey
    else:
        key, want = serialization.load_pem_public_key(pem), rsa.RSAPublicKey
    if not isinstance(key, want):
        raise ValueError("%s: not an RSA key" % path)
    return key


def response_time_now():
    """Current time, ISO 8601 with +08:00 offset, e.g. 2025-01-15T10:30:01+08:00."""
    return datetime.now(UTC8).isoformat(timespec="seconds")


def result_body(status, code, message=None, extra=None):
    """Compact JSON response body; extra fields go before 'result'."""
    body = dict(extra or {})
    body["result"] = {"resultCode": code,
                      "resultMessage": message or MESSAGES.get(
                          code, "Scripted result from the fake gateway."),
                      "resultStatus": status}
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def parse_request_body(raw):
    """Return (id_field, id_value, ok).  ok means: a JSON object with exactly
    one key, paymentRequestId or paymentId, whose value is a non-empty
    string.  id_field/id_value are filled in best-effort for the log."""
    def no_dupes(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError("duplicate key")
        return dict(pairs)
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=no_dupes)
    except (ValueError, RecursionError):
        return None, None, False
    if not isinstance(obj, dict):
        return None, None, False
    present = [k for k in ID_FIELDS if k in obj]
    field = present[0] if len(present) == 1 else None
    value = obj.get(field) if field else None
    if not isinstance(value, str):
        value = None
    return field, value, bool(field and value and len(obj) == 1)


# --------------------------------------------------------------------------
# Scripted outcomes
# --------------------------------------------------------------------------

class Plan:
    """What to answer.  kind: 'result' (JSON body), 'http500' or 'reset'.
    sign: 'normal', 'none', 'none-other' (no signature, foreign Client-Id),
    'bad', 'half', 'other', 'otherbytes', 'spaced', 'cased' or 'ecc224'.
    chunked: send the body with Transfer-Encoding: chunked."""

    def __init__(self, outcome, kind="result", status="S", code="SUCCESS",
                 sign="normal", delay_ms=0, body=None, huge=False,
                 chunked=False, http_status=200, send="whole", send_ms=0,
                 dup=None, key_version="1", algorithm="RSA256", rtime=None,
                 gzip_body=False, trailer=None, payment=None, spoil=None):
        self.outcome, self.kind, self.status, self.code = outcome, kind, status, code
        self.sign, self.delay_ms, self.body, self.huge = sign, delay_ms, body, huge
        self.chunked = chunked
        # fault modes: HTTP status, how the body goes out ("whole",
        # "headstall", "dribble", "cut"), a duplicated header ("sig",
        # "sigbad", "time", "client"), Signature fields, a Response-Time
        # to sign instead of now, a gzip-compressed body
        self.http_status, self.send, self.send_ms = http_status, send, send_ms
        self.dup, self.key_version, self.algorithm = dup, key_version, algorithm
        self.rtime, self.gzip_body = rtime, gzip_body
        # "sig": a chunked body followed by a trailer with a second,
        # bogus Signature field
        self.trailer = trailer
        # inquiryPayment: the paymentResult (status, code) of an S answer,
        # None for paid; spoil: how inquiry_body() spoils the answer
        self.payment, self.spoil = payment, spoil


SEQ_TOKENS = {
    "S": lambda: Plan("S"),
    "U": lambda: Plan("U:UNKNOWN_EXCEPTION", status="U", code="UNKNOWN_EXCEPTION"),
    "F": lambda: Plan("F:PROCESS_FAIL", status="F", code="PROCESS_FAIL"),
    "R": lambda: Plan("reset", kind="reset"),
    "E": lambda: Plan("http500", kind="http500"),
    "W": lambda: Plan("slow:2000", delay_ms=2000),
}

# Prefixes without parameters: outcome label = prefix, Plan arguments.
SIMPLE_PREFIXES = {
    "http500": {"kind": "http500"},
    "redirect": {"kind": "redirect"},
    "reset": {"kind": "reset"},
    "badjson": {"body": b'{"result": not json'},
    "noresult": {"body": b'{"acquirerId":"1"}'},
    "badsig": {"sign": "bad"},
    "halfsigned": {"sign": "half"},
    "otherclient": {"sign": "other"},
    "spaced": {"sign": "spaced"},
    "huge": {"huge": True},
    "chunked": {"huge": True, "chunked": True},
    "otherclientbytes": {"sign": "otherbytes"},
    "casedsig": {"sign": "cased"},
    "ecc224": {"sign": "ecc224"},
    "trailersig": {"chunked": True, "trailer": "sig"},
    "zulutime": {"rtime": "2025-01-15T02:30:01.250Z"},
    "deepjson": {"body": b'{"deep":' + b"[" * DEEP_LEVELS + b"]" * DEEP_LEVELS +
                 b',"acquirerId":"' + ACQUIRER_ID.encode() + b'","pspId":"' +
                 PSP_ID.encode() + b'","result":{"resultCode":"SUCCESS",'
                 b'"resultMessage":"success.","resultStatus":"S"}}'},
    "escapes": {"body": b'{"deep":' + b"[" * 63 + b"]" * 63 +
                b',"result":{"resultCode":"PROCESS_FAIL","resultMessage":'
                b'"quote \\" backslash \\\\u00e9 A=\\u0041 pair \\ud83d\\ude00",'
                b'"resultStatus":"F"}}'},
    "cutescape": {"body": b'{"result":{"resultCode":"PROCESS_FAIL","resultMessage":"\\ud83'},
    "longmsg": {"body": result_body("F", "PROCESS_FAIL",
                                    "first line\nsecond\tline " + "x" * 1978)},
    "unicode": {"status": "F", "code": "PROCESS_FAIL",
                "body": b'{"result":{"resultCode":"PROCESS_FAIL","resultMessage":"' +
                UNICODE_MESSAGE + b'","resultStatus":"F"}}'},
}

CODE = r"([A-Za-z0-9_]+)"

S_BODY = result_body("S", "SUCCESS", extra={"acquirerId": ACQUIRER_ID,
                                            "pspId": PSP_ID})

# rtime-KIND: a Response-Time header that is not an ISO 8601 date-time
BAD_TIMES = {
    "text": "not a time",
    "epoch": "1736908201",
    "month13": "2025-13-15T10:30:01+08:00",
    "notz": "2025-01-15T10:30:01",
    "feb29": "2025-02-29T10:30:01+08:00",
    "offset16": "2025-01-15T10:30:01+16:00",
}

# typed-KIND: an S answer with one field of a wrong JSON type
_R = b'"resultCode":"SUCCESS","resultMessage":"success.","resultStatus":"S"'
TYPED_BODIES = {
    "statusbool": b'{"result":{"resultCode":"SUCCESS","resultMessage":"success.",'
                  b'"resultStatus":true}}',
    "statusarray": b'{"result":{"resultCode":"SUCCESS","resultMessage":"success.",'
                   b'"resultStatus":["S"]}}',
    "codenum": b'{"result":{"resultCode":0,"resultMessage":"success.",'
               b'"resultStatus":"S"}}',
    "msgnum": b'{"result":{"resultCode":"SUCCESS","resultMessage":1,'
              b'"resultStatus":"S"}}',
    "msgnull": b'{"result":{"resultCode":"SUCCESS","resultMessage":null,'
               b'"resultStatus":"S"}}',
    "acqnum": b'{"acquirerId":1022188000000000001,"result":{' + _R + b'}}',
    "pspobj": b'{"pspId":{"id":"1022172000000000001"},"result":{' + _R + b'}}',
    "resultstring": b'{"result":"S"}',
    "resultarray": b'{"result":[{' + _R + b'}]}',
}

# --chaos: the faults drawn for a share of the calls, and the rest
CHAOS_FAULTS = ("stall", "reset", "http500", "http503", "u", "unsigned", "badsig")


def chaos_plan(stall_ms):
    """A fault picked at random (see --chaos)."""
    fault = random.choice(CHAOS_FAULTS)
    if fault == "stall":
        return Plan("chaos:stall:%d" % stall_ms, delay_ms=stall_ms)
    if fault == "reset":
        return Plan("chaos:reset", kind="reset")
    if fault == "http500":
        return Plan("chaos:http500", kind="http500")
    if fault == "http503":
        return Plan("chaos:http503", http_status=503)
    if fault == "u":
        return Plan("chaos:U:UNKNOWN_EXCEPTION", status="U", code="UNKNOWN_EXCEPTION")
    if fault == "unsigned":
        return Plan("chaos:unsigned-S", sign="none")
    return Plan("chaos:badsig", sign="bad")


def plan_for(ident, count, chaos=0.0, chaos_stall_ms=3000):
    """Pick the scripted outcome for id value `ident` (count = n-th request)."""
    def m(prefix):
        return re.match(prefix + r"(?:-|$)", ident)

    if plan := fault_plan(m):
        return plan

    if r := m(r"seq-([SUFREW](?:\.[SUFREW])*)"):
        tokens = r.group(1).split(".")
        return SEQ_TOKENS[tokens[min(count, len(tokens)) - 1]]()
    if r := m(r"f-" + CODE):
        return Plan("F:" + r.group(1), status="F", code=r.group(1))
    if r := m(r"u-" + CODE):
        return Plan("U:" + r.group(1), status="U", code=r.group(1))
    if r := m(r"slow-(\d+)"):
        return Plan("slow:" + r.group(1), delay_ms=int(r.group(1)))
    if r := m(r"unsigned-otherclient-([FU])-" + CODE):
        return Plan("unsigned-otherclient-%s:%s" % r.groups(), status=r.group(1),
                    code=r.group(2), sign="none-other")
    if r := m(r"unsigned-([FU])-" + CODE):
        return Plan("unsigned-%s:%s" % r.groups(), status=r.group(1),
                    code=r.group(2), sign="none")
    if m(r"unsigned-S"):
        return Plan("unsigned-S", sign="none")
    for prefix, kwargs in SIMPLE_PREFIXES.items():
        if m(prefix):
            return Plan(prefix, **kwargs)
    if chaos > 0 and random.random() < chaos:
        return chaos_plan(chaos_stall_ms)
    if chaos > 0 and random.random() < 0.05:
        return Plan("F:PROCESS_FAIL", status="F", code="PROCESS_FAIL")
    return Plan("S")


def alt_payment_id(ident):
    """A made-up but stable Alipay+ paymentId for a paymentRequestId."""
    return "2026" + str(int.from_bytes(
        hashlib.sha256(ident.encode("utf-8")).digest()[:12], "big")).zfill(28)[:28]


# ptyped-KIND: an inquiry's S answer whose payment fields are malformed;
# each a function that spoils the normal answer's fields (a dict)
PAYMENT_TYPOS = {
    "prstring": lambda d: d.update(paymentResult="S"),
    "prstatus": lambda d: d["paymentResult"].update(resultStatus="X"),
    "prnocode": lambda d: d["paymentResult"].pop("resultCode"),
    "timenum": lambda d: d.update(paymentTime=1),
    "badtime": lambda d: d.update(paymentTime="2026-02-30T18:15:07+08:00"),
    "amountnum": lambda d: d["paymentAmount"].update(value=1250),
    "amountdot": lambda d: d["paymentAmount"].update(value="12.50"),
    "nocurrency": lambda d: d["paymentAmount"].pop("currency"),
    "nopayresult": lambda d: d.pop("paymentResult"),
}


def inquiry_body(ident, field, payment=None, spoil=None, padding=False):
    """Compact JSON of an inquiry's S answer about id `ident` sent in
    `field`; payment = (status, code) of paymentResult, None for paid;
    spoil: "other" (about another payment), "noecho" (without the id
    asked about) or a PAYMENT_TYPOS key."""
    status, code = payment or ("S", "SUCCESS")
    if spoil == "other":
        ident = ident + "-other"
    if field == "paymentId":
        ids = {"paymentId": ident, "paymentRequestId": "PR-" + ident}
    else:
        ids = {"paymentId": alt_payment_id(ident), "paymentRequestId": ident}
    d = {"acquirerId": ACQUIRER_ID, "pspId": PSP_ID,
         "paymentResult": {"resultCode": code,
                           "resultMessage": MESSAGES.get(code, "Scripted payment result."),
                           "resultStatus": status}}
    d.update(ids)
    if spoil == "noecho":
        del d[field]
    d["paymentAmount"] = dict(PAYMENT_AMOUNT)
    if status == "S":
        d["paymentTime"] = PAYMENT_TIME
    if spoil in PAYMENT_TYPOS:
        PAYMENT_TYPOS[spoil](d)
    if padding:
        d["padding"] = "x" * HUGE_PADDING
    return result_body("S", "SUCCESS", extra=d)


def inquiry_plan_for(ident, count, cancelled, chaos=0.0, chaos_stall_ms=3000):
    """Pick the scripted inquiryPayment outcome for `ident` (count = n-th
    inquiry; cancelled: its cancelPayment was answered S)."""
    def m(prefix):
        return re.match(prefix + r"(?:-|$)", ident)

    if plan := fault_plan(m):
        return plan
    if cancelled:
        return Plan("closed", payment=("F", "ORDER_IS_CLOSED"))
    if m(r"paid"):
        return Plan("paid")
    if r := m(r"failed-" + CODE):
        return Plan("failed:" + r.group(1), payment=("F", r.group(1)))
    if r := m(r"later-(\d+)"):
        if count <= int(r.group(1)):
            return Plan("inprocess", payment=("U", "PAYMENT_IN_PROCESS"))
        return Plan("paid")
    if m(r"inprocess"):
        return Plan("inprocess", payment=("U", "PAYMENT_IN_PROCESS"))
    if m(r"notfound"):
        return Plan("F:ORDER_NOT_EXIST", status="F", code="ORDER_NOT_EXIST")
    if m(r"prnotfound"):
        return Plan("prnotfound", payment=("F", "ORDER_NOT_EXIST"))
    if m(r"nopayresult"):
        return Plan("nopayresult", spoil="nopayresult")
    if m(r"otherpayment"):
        return Plan("otherpayment", spoil="other")
    if m(r"noecho"):
        return Plan("noecho", spoil="noecho")
    if (r := m(r"ptyped-(\w+)")) and r.group(1) in PAYMENT_TYPOS:
        return Plan("ptyped:" + r.group(1), spoil=r.group(1))
    plan = plan_for(ident, count, chaos, chaos_stall_ms)
    return Plan("paid") if plan.outcome == "S" else plan


def fault_plan(m):
    """The fault modes (see the module's docstring), or None."""
    if r := m(r"headstall-(\d+)"):
        return Plan("headstall:" + r.group(1), send="headstall",
                    send_ms=int(r.group(1)))
    if r := m(r"dribble-(\d+)"):
        return Plan("dribble:" + r.group(1), send="dribble", send_ms=int(r.group(1)))
    if m(r"cutbody"):
        return Plan("cutbody", send="cut")
    if r := m(r"http-([1-5]\d\d)"):
        status = int(r.group(1))
        return Plan("http:%d" % status, http_status=status,
                    body=b"" if status in (204, 304) else None)
    if m(r"empty"):
        return Plan("empty", body=b"")
    if m(r"gzip"):
        return Plan("gzip", gzip_body=True)
    for name in ("dupsigbad", "dupsig", "duptime", "dupclient"):
        if m(name):
            return Plan(name, dup=name[3:])
    if r := m(r"keyversion-(\w+)"):
        return Plan("keyversion:" + r.group(1), key_version=r.group(1))
    if r := m(r"algo-(\w+)"):
        return Plan("algo:" + r.group(1), algorithm=r.group(1))
    if (r := m(r"rtime-(\w+)")) and r.group(1) in BAD_TIMES:
        return Plan("rtime:" + r.group(1), rtime=BAD_TIMES[r.group(1)])
    if (r := m(r"typed-(\w+)")) and r.group(1) in TYPED_BODIES:
        return Plan("typed:" + r.group(1), body=TYPED_BODIES[r.group(1)])
    if r := m(r"rstatus-([A-Za-z]*)"):
        return Plan("rstatus:" + r.group(1),
                    body=result_body(r.group(1), "SUCCESS", "success."))
    return None


# --------------------------------------------------------------------------
# Gateway state: configuration, keys, per-id counters, request log
# --------------------------------------------------------------------------

def tls_context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


class Gateway:
    def __init__(self, args):
        self.path = args.path
        self.inquiry_path = args.inquiry_path
        # ids whose cancelPayment was answered S: cancelled payments
        self.cancelled = set()
        self.client_id = args.client_id
        self.client_pubs = [load_rsa_key(k, private=False)
                            for k in args.client_pubkey]
        self.sign_key = load_rsa_key(args.sign_key, private=True)
        self.ssl_ctx = tls_context(args.cert, args.key)
        self.chaos = args.chaos
        self.chaos_stall_ms = args.chaos_stall_ms
        self.lock = threading.Lock()
        self.counts = {}
        fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.fchmod(fd, 0o644)
        except OSError:
            pass
        self.log_file = open(fd, "a", buffering=1, encoding="utf-8")

    def api(self, path):
        """The API served at `path`, or None."""
        return {self.path: "cancelPayment",
                self.inquiry_path: "inquiryPayment"}.get(path)

    def next_count(self, ident, api="cancelPayment"):
        """Requests for ident to this API so far, this one included."""
        with self.lock:
            n = self.counts.get((api, ident), 0) + 1
            self.counts[(api, ident)] = n
            return n

    def note_cancelled(self, ident):
        with self.lock:
            self.cancelled.add(ident)

    def is_cancelled(self, ident):
        with self.lock:
            return ident in self.cancelled

    def log(self, entry):
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self.lock:
            try:
                self.log_file.write(line)
                self.log_file.flush()
            except OSError as e:
                print("fake_gateway: cannot write log: %s" % e, file=sys.stderr)

    def request_signature_valid(self, client_id, req_time, sig_header, body,
                                path=None):
        """The request signature check (docs/protocol.md, sections 3 and 4)."""
        if client_id is None or req_time is None or sig_header is None:
            return False
        try:
            params = parse_signature_header(sig_header)
            if params.get("algorithm") != "RSA256" or not params.get("signature"):
                return False
            sig = decode_signature_value(params["signature"])
        except ValueError:
            return False
        # http.server decodes header bytes as latin-1; undo that exactly.
        content = content_to_sign((path or self.path).encode("latin-1"),
                                  client_id.encode("latin-1"),
                                  req_time.encode("latin-1"), body)
        return any(verify(k, content, sig) for k in self.client_pubs)


# --------------------------------------------------------------------------
# HTTP side
# --------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeAlipayPlus/1.0"
    timeout = 120                       # idle keep-alive connections

    def version_string(self):           # no trailing Python version
        return self.server_version

    def log_message(self, fmt, *args):  # no per-request stderr noise
        pass

    def __getattr__(self, name):
        # Every method (do_POST, do_GET, do_FOO...) goes through _dispatch,
        # which answers 404 for anything but POST on --path.
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    # -- body reading -------------------------------------------------------

    def _read_body(self):
        """Raw request body (Content-Length or chunked); None if unusable."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(8)
        length = int(self.headers.get("Content-Length", "0"))
        if length < 0:
            raise ValueError("negative Content-Length")
        body = self.rfile.read(length)
        if len(body) != length:
            return None                 # client went away mid-body
        return body

    # -- replies ------------------------------------------------------------

    def _send(self, code, body, headers=(), chunked=False, trailers=()):
        self.send_response(code)
        for name, value in headers:
            self.send_header(name, value)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if not chunked:
            self.wfile.write(body)
            return
        step = 64 * 1024
        for i in range(0, len(body), step):
            part = body[i:i + step]
            self.wfile.write(b"%x\r\n" % len(part) + part + b"\r\n")
        self.wfile.write(b"0\r\n" + b"".join(
            ("%s: %s\r\n" % (name, value)).encode("latin-1")
            for name, value in trailers) + b"\r\n")

    def _send_plain(self, code, text):
        self._send(code, text.encode(), [("Content-Type", "text/plain; charset=utf-8")])

    def _send_faulty(self, code, body, headers, plan):
        """Send an answer the way plan.send says: headers then a stall,
        the body a byte at a time, or half the body and a close."""
        self.send_response(code)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.close_connection = True
        try:
            self.wfile.flush()
            if plan.send == "headstall":
                time.sleep(plan.send_ms / 1000.0)
                self.wfile.write(body)
            elif plan.send == "dribble":
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(plan.send_ms / 1000.0)
            else:
                self.wfile.write(body[:len(body) // 2])
                self.wfile.flush()
        except OSError:
            pass                        # the client gave up first

    def _send_json(self, body, sign, chunked=False, plan=None):
        """Send a JSON body, signed according to `sign` (see Plan), with
        the faults plan asks for."""
        gw = self.server.gw
        plan = plan or Plan("S")
        headers = [("Content-Type", JSON_TYPE)]
        if plan.gzip_body:
            body = gzip.compress(body, mtime=0)
            headers.append(("Content-Encoding", "gzip"))
        code = plan.http_status
        if sign == "none":
            self._send(code, body, headers, chunked)
            return
        if sign == "none-other":
            headers.append(("Client-Id", OTHER_CLIENT_ID))
            self._send(code, body, headers, chunked)
            return
        cid = {"other": OTHER_CLIENT_ID,
               "otherbytes": OTHER_CLIENT_BYTES}.get(sign, gw.client_id)
        rtime = plan.rtime or response_time_now()
        signed_body = body + b" " if sign == "bad" else body
        # header values go out as latin-1 bytes; sign those same bytes
        b64 = sign_b64(gw.sign_key, content_to_sign(self.path, cid.encode("latin-1"),
                                                    rtime, signed_body))
        spaced = sign == "spaced"
        names = ("client-id", "response-time", "signature") if spaced else \
                ("Client-Id", "Response-Time", "Signature")
        headers.append((names[0], cid))
        if sign != "half":
            headers.append((names[1], rtime))
        if sign == "cased":
            sig = "algorithm = rsa256 , keyVersion = 1 , SIGNATURE = " + pct_encode(b64)
        elif sign == "ecc224":
            sig = signature_header(b64, algorithm="ECC224")
        else:
            sig = signature_header(b64, spaced=spaced, lowercase_hex=spaced,
                                   key_version=plan.key_version,
                                   algorithm=plan.algorithm)
        headers.append((names[2], sig))
        if plan.dup == "sig":
            headers.append(("Signature", sig))
        elif plan.dup == "sigbad":
            bogus = sign_b64(gw.sign_key, content_to_sign(self.path, cid, rtime,
                                                          body + b" "))
            headers.append(("Signature", signature_header(bogus)))
        elif plan.dup == "time":
            headers.append(("Response-Time", "2001-02-03T04:05:06+08:00"))
        elif plan.dup == "client":
            headers.append(("Client-Id", cid))
        if plan.send != "whole":
            self._send_faulty(code, body, headers, plan)
            return
        trailers = []
        if plan.trailer == "sig":
            bogus = sign_b64(gw.sign_key, content_to_sign(self.path, cid, rtime,
                                                          body + b" "))
            trailers.append(("Signature", signature_header(bogus)))
        self._send(code, body, headers, chunked, trailers)

    def _reset(self):
        """Drop the connection with a TCP RST and no response."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    # -- request handling ---------------------------------------------------

    def _dispatch(self):
        with INFLIGHT_LOCK:
            INFLIGHT[0] += 1
            self._inflight = INFLIGHT[0]
        try:
            self._dispatch_counted()
        finally:
            with INFLIGHT_LOCK:
                INFLIGHT[0] -= 1

    def _dispatch_counted(self):
        gw = self.server.gw
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._send_plain(400, "bad request body framing\n")
            return
        if body is None:
            self.close_connection = True
            return

        hdr = self.headers
        entry = {
            "ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "method": self.command, "path": self.path,
            "api": gw.api(self.path), "id": None, "id_field": None,
            "body": body.decode("utf-8", errors="replace"),
            "client_id": hdr.get("Client-Id"),
            "request_time": hdr.get("Request-Time"),
            "content_type": hdr.get("Content-Type"),
            "signature_header": hdr.get("Signature"),
            "signature_valid": False, "outcome": None, "count": None,
            # the client's address and port: the same port on two requests
            # means the client reused its connection
            "peer": "%s:%s" % self.client_address[:2],
            "inflight": self._inflight,
        }

        if self.command != "POST" or entry["api"] is None:
            entry["outcome"] = "404"
            gw.log(entry)
            self._send_plain(404, "not found\n")
            return

        field, ident, body_ok = parse_request_body(body)
        entry["id"], entry["id_field"] = ident, field
        entry["signature_valid"] = gw.request_signature_valid(
            entry["client_id"], entry["request_time"], entry["signature_header"], body,
            self.path)
        ctype = re.sub(r"\s+", "", entry["content_type"] or "").lower()

        def reject(code, sign="none"):
            return Plan("F:" + code, status="F", code=code, sign=sign)

        # lat-MS-REST: the outcome of REST, MS ms later (a distant gateway)
        latency_ms, outcome_id = 0, ident
        if ident and (r := re.match(r"lat-(\d+)-(.+)$", ident)):
            latency_ms, outcome_id = int(r.group(1)), r.group(2)

        # Checks in this order; the first failure wins.  Only PARAM_ILLEGAL
        # is signed (the caller has been authenticated by then).
        if entry["client_id"] != gw.client_id:
            plan = reject("INVALID_CLIENT")
        elif ctype != "application/json;charset=utf-8":
            plan = reject("MEDIA_TYPE_NOT_ACCEPTABLE")
        elif not entry["signature_valid"]:
            plan = reject("INVALID_SIGNATURE")
        elif not body_ok:
            plan = reject("PARAM_ILLEGAL", sign="normal")
        elif entry["api"] == "inquiryPayment":
            entry["count"] = gw.next_count(ident, entry["api"])
            plan = inquiry_plan_for(outcome_id, entry["count"], gw.is_cancelled(ident),
                                    gw.chaos, gw.chaos_stall_ms)
        else:
            entry["count"] = gw.next_count(ident, entry["api"])
            plan = plan_for(outcome_id, entry["count"], gw.chaos, gw.chaos_stall_ms)
            # a plain S answer: the payment is cancelled from now on
            if plan.kind == "result" and plan.status == "S" and \
                    plan.body is None and plan.http_status == 200:
                gw.note_cancelled(ident)

        entry["outcome"] = plan.outcome
        gw.log(entry)                   # logged before acting (reset, sleep)
        if latency_ms:
            time.sleep(latency_ms / 1000.0)
        self._execute(plan, entry["api"], ident, field)

    def _execute(self, plan, api="cancelPayment", ident=None, field=None):
        if plan.delay_ms:
            time.sleep(plan.delay_ms / 1000.0)
        if plan.kind == "reset":
            self._reset()
        elif plan.kind == "http500":
            self._send_plain(500, "internal server error\n")
        elif plan.kind == "redirect":
            # a redirect to the same path with a plain id; clients must not follow
            self._send(302, b"", [("Location", self.path + "?to=ok")])
        else:
            if plan.body is not None:
                body = plan.body
            elif api == "inquiryPayment" and plan.status == "S":
                body = inquiry_body(ident, field, plan.payment, plan.spoil,
                                    plan.huge)
            else:
                extra = {}
                if plan.status == "S":
                    extra = {"acquirerId": ACQUIRER_ID, "pspId": PSP_ID}
                if plan.huge:
                    extra["padding"] = "x" * HUGE_PADDING
                body = result_body(plan.status, plan.code, extra=extra)
            self._send_json(body, plan.sign, plan.chunked, plan)


class GatewayServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, gw, ssl_ctx=None):
        self.gw = gw
        self.ssl_ctx = ssl_ctx or gw.ssl_ctx
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    def server_bind(self):
        # HTTPServer.server_bind calls getfqdn(), which may do slow DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def get_request(self):
        sock, addr = self.socket.accept()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return sock, addr

    def finish_request(self, request, client_address):
        # TLS handshake in the per-connection thread, not in accept().
        try:
            conn = self.ssl_ctx.wrap_socket(request, server_side=True,
                                               do_handshake_on_connect=False)
        except OSError:
            return
        try:
            conn.settimeout(10)
            conn.do_handshake()
            conn.settimeout(None)
            self.RequestHandlerClass(conn, client_address, self)
        except OSError:                 # includes ssl.SSLError, resets
            pass
        finally:
            conn.close()


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def silent_listener(host):
    """A TCP port that accepts connections and never sends a byte: a
    server that does not speak TLS.  Connections are held until the peer
    closes them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    lsock = socket.socket(family, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, 0))
    lsock.listen(64)

    def hold(conn):
        try:
            while conn.recv(4096):
                pass
        except OSError:
            pass
        finally:
            conn.close()

    def accept_loop():
        while True:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            threading.Thread(target=hold, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    return lsock


class _Stop(Exception):
    """Raised from the SIGTERM/SIGINT handler to leave serve_forever()."""


def _raise_stop(signum, frame):
    raise _Stop()


def atomic_write(path, text):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Fake Alipay+ cancelPayment and inquiryPayment gateway")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--path", default=DEFAULT_PATH,
                    help="path of the cancelPayment API")
    ap.add_argument("--inquiry-path", default=DEFAULT_INQUIRY_PATH,
                    help="path of the inquiryPayment API")
    ap.add_argument("--pidfile")
    for name in ("--portfile", "--cert", "--key", "--client-id",
                 "--sign-key", "--log"):
        ap.add_argument(name, required=True)
    ap.add_argument("--client-pubkey", required=True, action="append",
                    help="the acquirer's public key; may be given more than once")
    ap.add_argument("--chaos", type=float, default=0.0,
                    help="share of prefix-less calls that get a random fault")
    ap.add_argument("--chaos-stall-ms", type=int, default=3000)
    ap.add_argument("--alt-listener", nargs=3, action="append", default=[],
                    metavar=("NAME", "CERT", "KEY"),
                    help="another port with another certificate (PORTFILE.NAME)")
    ap.add_argument("--silent-listener", action="store_true",
                    help="a port that accepts TCP and never speaks (PORTFILE.silent)")
    args = ap.parse_args(argv)

    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    server = None
    try:
        gw = Gateway(args)
        server = GatewayServer((args.host, args.port), gw)   # listening now
        for name, cert, key in args.alt_listener:
            alt = GatewayServer((args.host, 0), gw, tls_context(cert, key))
            threading.Thread(target=alt.serve_forever, args=(0.5,),
                             daemon=True).start()
            atomic_write("%s.%s" % (args.portfile, name),
                         "%d\n" % alt.server_address[1])
        if args.silent_listener:
            silent = silent_listener(args.host)
            atomic_write(args.portfile + ".silent",
                         "%d\n" % silent.getsockname()[1])
        if args.pidfile:
            atomic_write(args.pidfile, "%d\n" % os.getpid())
        atomic_write(args.portfile, "%d\n" % server.server_address[1])
        server.serve_forever(poll_interval=0.5)
    except _Stop:
        pass
    finally:
        if server is not None:
            server.server_close()
        if args.pidfile:
            try:
                os.unlink(args.pidfile)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
