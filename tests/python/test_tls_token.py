"""tritonclient against vigil-edge with TLS and bearer tokens: the server's certificate from a CA
made here (the `cryptography` package), the client trusting it (`ssl=True`, `root_certificates`)
and sending its token as a header; no token is UNAUTHENTICATED, a token without the `infer`
scope PERMISSION_DENIED, the right one gets the same answer as onnxruntime."""

import datetime
import hashlib
import ipaddress
import pathlib
import secrets
import tempfile

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tritonclient.utils import InferenceServerException

from conftest import MODEL, ROOT, preprocess, sample_files, start_edge, stop_edge


def write_certificates(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """A CA and a server certificate for localhost and 127.0.0.1: (ca, cert, key) PEM files."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plant test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vigil-edge")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def test_tritonclient_over_tls_with_a_token(model_config, onnx_session):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        ca, cert, key = write_certificates(tmp)
        line, analyst = (f"vgl_{secrets.token_hex(32)}" for _ in range(2))
        entries = [("line-3", line, "infer"), ("ana", analyst, "analyst")]
        (tmp / "tokens.toml").write_text(
            "".join(
                f'[[token]]\nname = "{n}"\nsha256 = "{hashlib.sha256(t.encode()).hexdigest()}"\nscopes = ["{s}"]\n'
                for n, t, s in entries
            )
        )
        (tmp / "edge.toml").write_text(
            f'[security.tls]\ncert = "{cert}"\nkey = "{key}"\n[security.auth]\ntokens_file = "{tmp / "tokens.toml"}"\n'
        )
        proc, address, log = start_edge(ROOT / "models", "--config", str(tmp / "edge.toml"))
        try:
            url = "localhost:" + address.rsplit(":", 1)[1]
            client = grpcclient.InferenceServerClient(url, ssl=True, root_certificates=str(ca))
            # Liveness stays open for probes.
            assert client.is_server_live()
            with pytest.raises(InferenceServerException) as e:
                client.get_model_metadata(MODEL)
            assert e.value.status() == "StatusCode.UNAUTHENTICATED"

            x = np.concatenate([preprocess(f, model_config) for f in sample_files("normal", "drifted")[:4]])
            inp = grpcclient.InferInput("image", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            with pytest.raises(InferenceServerException) as e:
                client.infer(MODEL, [inp], headers={"authorization": f"Bearer {analyst}"})
            assert e.value.status() == "StatusCode.PERMISSION_DENIED"
            assert "'ana' lacks the 'infer' scope" in e.value.message()

            result = client.infer(MODEL, [inp], headers={"authorization": f"Bearer {line}"})
            expected = onnx_session.run(["defect_probability"], {"image": x})[0]
            np.testing.assert_allclose(result.as_numpy("defect_probability"), expected, rtol=0, atol=1e-5)
            assert client.get_model_metadata(MODEL, headers={"authorization": f"Bearer {line}"}).name == MODEL

            # Plaintext to the TLS port gets no answer.
            plain = grpcclient.InferenceServerClient(url)
            with pytest.raises(InferenceServerException):
                plain.is_server_live(client_timeout=5)
        finally:
            stop_edge(proc, log)
