#!/usr/bin/python3
"""
make_seeds.py -- writes the seed corpora of the fuzz harnesses
(test/fuzz/<harness>/) from test vector B and the fake gateway's bodies.

Run once by hand when the seeds should change (python3 test/fuzz/make_seeds.py);
scripts/fuzz.sh only reads the files it wrote.  Every key here is test
vector B's (test/vectors/, a test key pair that signs nothing real) in
another encoding, or a throwaway key made on the spot.
"""

import base64
import json
import os
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import fake_gateway as gw  # noqa: E402

VECTORS = os.path.join(HERE, "..", "vectors")


def write(harness, name, data):
    folder = os.path.join(HERE, harness)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))


def responses():
    with open(os.path.join(VECTORS, "vector_b.json")) as f:
        vb = json.load(f)
    write("response", "s_success", vb["b2_response"]["body"])
    write("response", "f_process_fail", gw.result_body("F", "PROCESS_FAIL"))
    write("response", "f_invalid_signature", gw.result_body("F", "INVALID_SIGNATURE"))
    write("response", "u_unknown_exception", gw.result_body("U", "UNKNOWN_EXCEPTION"))
    write("response", "s_with_ids", gw.result_body(
        "S", "SUCCESS", "success.", {"acquirerId": gw.ACQUIRER_ID, "pspId": gw.PSP_ID}))
    for label in ("badjson", "noresult", "escapes", "cutescape", "longmsg", "unicode"):
        write("response", label, gw.SIMPLE_PREFIXES[label]["body"])
    write("response", "deep_64", b'{"deep":' + b"[" * 63 + b"]" * 63 +
          b',"result":{"resultCode":"SUCCESS","resultStatus":"S"}}')
    write("response", "deep_65", b'{"deep":' + b"[" * 64 + b"]" * 64 +
          b',"result":{"resultCode":"SUCCESS","resultStatus":"S"}}')
    write("response", "spaced", b' \r\n\t{ "result" : { "resultStatus" : "U" ,'
          b' "resultCode" : "X" } , "pspId" : null }\n')
    write("response", "nested_result", b'{"a":{"result":{"resultStatus":"S",'
          b'"resultCode":"SUCCESS"}},"result":[{"resultStatus":"S"}],'
          b'"result":{"resultStatus":"F","resultCode":"\\u00e9\\ud800"}}')
    write("response", "twice", b'{"result":{"resultStatus":"S","resultStatus":"F",'
          b'"resultCode":"A","resultCode":""},"acquirerId":1,"pspId":"\\u0000"}')
    write("response", "latin1_raw", b'{"result":{"resultStatus":"F","resultCode":"\xe9"}}')
    write("response", "typed_fields", b'{"acquirerId":1,"pspId":null,"result":'
          b'{"resultStatus":"S","resultCode":["SUCCESS"],"resultMessage":{}}}')
    write("response", "status_ss", b'{"result":{"resultStatus":"SS","resultCode":"SUCCESS"}}')
    # inquiryPayment answers (parsed with the payment fields too)
    with open(os.path.join(VECTORS, "vector_c.json")) as f:
        write("response", "inquiry_paid", json.load(f)["c2_response"]["body"])
    write("response", "inquiry_in_process", gw.inquiry_body(
        "PR_1", "paymentRequestId", ("U", "PAYMENT_IN_PROCESS")))
    write("response", "inquiry_not_found", gw.result_body("F", "ORDER_NOT_EXIST"))
    for typo in ("prstring", "prstatus", "timenum", "amountnum", "nocurrency"):
        write("response", "inquiry_" + typo,
              gw.inquiry_body("PR_1", "paymentRequestId", spoil=typo))
    write("response", "c1_controls", '{"result":{"resultStatus":"F","resultCode":'
          '"A\u0085\u009f\u00a0\\u0085\\u007f\\n","resultMessage":"\U0001F600\u4e2d"}}')


def network_text():
    write("network_text", "ascii", "response Client-Id \"OTHER_CLIENT_0001\" differs")
    write("network_text", "utf8", "caf\u00e9 \u4e2d\u6587 \U0001F600 \u00ff\u0100")
    write("network_text", "bytes", gw.OTHER_CLIENT_BYTES.encode("latin-1"))
    write("network_text", "controls", b"a\x00b\x01\x1f\x7f\r\n\t" + "\u0085\u009f".encode())
    write("network_text", "broken_utf8", b"\xc3\x28\xe2\x82\xf0\x9f\x98\xed\xa0\x80\xf4\x90\x80\x80\xc0\xaf")
    write("network_text", "long", "\u00e9" * 300 + "x" * 10)
    write("network_text", "curl", "Failed to connect to localhost port 1: Connection refused")


def signatures():
    with open(os.path.join(VECTORS, "vector_b.json")) as f:
        vb = json.load(f)
    value = vb["b2_response"]["signature_value"]
    b64 = gw.decode_signature_value(value)
    std = base64.b64encode(b64).decode()
    write("signature", "canonical", "algorithm=RSA256,keyVersion=1,signature=" + value)
    write("signature", "spaced", gw.signature_header(std, spaced=True, lowercase_hex=True))
    write("signature", "cased", "algorithm = rsa256 , keyVersion = 1 , SIGNATURE = " + value)
    write("signature", "bare_value", value)
    write("signature", "bare_base64", std)
    write("signature", "urlsafe_unpadded",
          "signature=" + base64.urlsafe_b64encode(b64).decode().rstrip("="))
    write("signature", "ecc224", gw.signature_header(std, algorithm="ECC224"))
    write("signature", "twice", "signature=" + value + ",signature=" + value)
    write("signature", "no_field", "algorithm=RSA256,,keyVersion,signature=AAAA")
    write("signature", "padding_only", "signature====")
    write("signature", "request_header", vb["b1_request"]["signature_header"])
    write("signature", "key_version_2", "algorithm=RSA256,keyVersion=2,signature=" + value)
    write("signature", "key_version_padded", "keyVersion = 0001 ,signature=" + value)
    write("signature", "key_version_twice",
          "keyVersion=1,keyVersion=1,signature=" + value)
    write("signature", "key_version_huge", "keyVersion=99999999999999999999,signature=" + value)
    write("signature", "percent_odd", "signature=%2%zz%%41+/=%00AA")


def body():
    # piece lists for fuzz_body (see its header): a byte < 0x80 is the length
    # of the piece that follows; 0x80 | hi, lo, fill is (hi << 8 | lo) * 64
    # bytes of fill
    pieces = [b'{"result":', b'{"resultCode":"SUCCESS",', b'"resultStatus":"S"}}']
    write("body", "three_pieces", b"".join(bytes([len(p)]) + p for p in pieces))
    write("body", "cap_exact", b"\xc0\x00x")
    write("body", "cap_then_one_more", b"\xc0\x00x\x01A")
    write("body", "over_cap", b"\xc0\x01x")
    write("body", "empty_pieces", b"\x00\x00\x81\x00 \x7f")


def keys():
    with open(os.path.join(VECTORS, "vector_b_private.pem"), "rb") as f:
        priv = serialization.load_pem_private_key(f.read(), None)
    pub = priv.public_key()
    P, E = serialization.PrivateFormat, serialization.Encoding
    none = serialization.NoEncryption()
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    pkcs1 = serialization.PublicFormat.PKCS1
    der_priv = priv.private_bytes(E.DER, P.PKCS8, none)
    der_pub = pub.public_bytes(E.DER, spki)
    write("key", "private_pkcs8_pem", priv.private_bytes(E.PEM, P.PKCS8, none))
    write("key", "private_pkcs1_pem", priv.private_bytes(E.PEM, P.TraditionalOpenSSL, none))
    write("key", "private_pkcs8_der", der_priv)
    write("key", "private_pkcs1_der", priv.private_bytes(E.DER, P.TraditionalOpenSSL, none))
    write("key", "private_base64", base64.encodebytes(der_priv))
    write("key", "public_spki_pem", pub.public_bytes(E.PEM, spki))
    write("key", "public_pkcs1_pem", pub.public_bytes(E.PEM, pkcs1))
    write("key", "public_spki_der", der_pub)
    write("key", "public_base64", base64.b64encode(der_pub))
    write("key", "public_base64_unpadded", base64.b64encode(der_pub).rstrip(b"=") + b"\r\n")
    # a throwaway elliptic-curve key, made here: must be refused (not RSA)
    ecc = ec.generate_private_key(ec.SECP256R1())
    write("key", "ec_private_pem_throwaway", ecc.private_bytes(E.PEM, P.PKCS8, none))
    write("key", "ec_public_pem_throwaway", ecc.public_key().public_bytes(E.PEM, spki))


if __name__ == "__main__":
    responses()
    network_text()
    signatures()
    body()
    keys()
