#!/usr/bin/env python3
"""Makes the benchmark's token keys and tokens (bench/run.sh's auth rows).

Benchmark-only material, committed so a run needs no Python: an HS256
secret, an ES256 key pair, and one token for each that grants every
channel and expires in 2100. Never use these keys anywhere else.
Rerun (needs PyJWT and cryptography) to make new ones.
"""
import os
import jwt
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import ec

here = os.path.dirname(os.path.abspath(__file__))
def write(name, data):
    with open(os.path.join(here, name), "wb") as f:
        f.write(data)

claims = {"sub": "bench", "channels": ["*"], "exp": 4102444800}
secret = os.urandom(32).hex().encode()
write("hs256.secret", secret + b"\n")
write("hs256.token", jwt.encode(claims, secret, algorithm="HS256").encode() + b"\n")
key = ec.generate_private_key(ec.SECP256R1())
write("es256.key.pem", key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
write("es256.pub.pem", key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
write("es256.token", jwt.encode(claims, key, algorithm="ES256").encode() + b"\n")
