"""Helpers for the security tests: certificates with chosen names, raw protocol
clients speaking to a real ReceiverProxy, and real proxy actors in one Ray cluster."""
from __future__ import annotations

import datetime
import socket
import ssl
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack

from fed.transport import wire

MIB = 1024 * 1024


def issue_cert(pki: Path, out: Path, *, cn: str, dns: Sequence[str] = (),
               uris: Sequence[str] = ()) -> tuple[str, str]:
    """A leaf certificate signed by the CA in `pki` (a `fed certs` directory), with
    exactly the names given. Returns (cert path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )
    names = [x509.DNSName(d) for d in dns] + [x509.UniformResourceIdentifier(u) for u in uris]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    out.parent.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out.with_suffix(".crt"), out.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    return str(cert_path), str(key_path)


def der_of(cert_path: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(Path(cert_path).read_text())


# ---- raw protocol clients -----------------------------------------------------------------


class Raw:
    """A hand-driven connection to a receiver: what a hostile peer can do."""

    def __init__(self, port: int, tls: tuple[str, str, str] | None = None,
                 timeout: float = 10.0) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls is not None:
            cert, key, ca = tls
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_cert_chain(cert, key)
            ctx.load_verify_locations(cafile=ca)
            ctx.check_hostname = False
            sock = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
        self.sock = sock

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def hello(self, src: str, job: str, dst: str,
              secret: bytes | None = None) -> tuple[int, dict]:
        """HELLO as `src`; with `secret`, carrying the job-secret proof a sender adds."""
        from fed.transport.proof import hello_proof

        body = {"proto": wire.PROTOCOL, "src": src, "job": job, "dst": dst}
        if secret is not None:
            body["proof"] = hello_proof(secret, src, dst, job)
        self.control(wire.HELLO, body)
        return self.read()

    def control(self, ftype: int, body: dict) -> None:
        self.sock.sendall(wire.encode_control(ftype, body))

    def frame(self, ftype: int, payload: bytes, declared: int | None = None) -> None:
        n = len(payload) if declared is None else declared
        self.sock.sendall(struct.pack("!BI", ftype, n) + payload)

    def read(self) -> tuple[int, dict]:
        return wire.read_control(self.sock, 1 << 20)

    def send_value(self, key: dict, payload: bytes, buffers: Sequence[bytes] = (),
                   kind: str = "value", chunk: int = 4 * MIB,
                   fmt: str = "codec") -> tuple[int, dict]:
        sizes = [len(payload)] + [len(b) for b in buffers]
        header = wire.encode_control(wire.MSG, {"key": key, "kind": kind, "format": fmt,
                                                "sizes": sizes})
        try:
            wire.send_value(self.sock, header, [payload, *buffers], chunk)
        except OSError:
            pass  # the receiver may refuse on the header alone and close before the body
        return self.read()

    def reply_or_closed(self) -> tuple[int, dict] | None:
        """The receiver's answer, or None if it closed without one."""
        try:
            return self.read()
        except (OSError, wire.PeerClosed, wire.ProtocolError):
            return None


def msg_key(job: str, src: str, dst: str, ordinal: int, call: str = "tests.producer") -> dict:
    return {
        "job": job, "src": src, "dst": dst, "ordinal": ordinal,
        "producer_seq": ordinal + 1, "producer_index": 0, "producer_call": call,
        "consumer_seq": ordinal + 2, "consumer_call": "tests.consumer",
    }


def pickled(value: Any) -> bytes:
    """A raw pickle (send it with fmt="pickle" to reach the opt-in unpickler)."""
    import pickle

    return pickle.dumps(value, protocol=5)


def encoded(value: Any) -> bytes:
    """The codec header of a value without out-of-band buffers (the default format)."""
    from fed import codec

    out = codec.encode(value)
    assert not out.buffers, "encoded() is for values without out-of-band buffers"
    return out.header


# ---- real proxies in this process's Ray cluster -------------------------------------------


def start_receiver(party: str, job: str, parties: list[str], tls: Any = None, *,
                   allowlist: Any = None, max_message: int | None = None,
                   limits: dict | None = None, job_secret: bytes | None = None):
    """A ReceiverProxy actor on a free loopback port: (actor, port)."""
    import ray

    from fed.transport.receiver import ReceiverProxy

    actor = ray.remote(ReceiverProxy).options(num_cpus=0, max_concurrency=1000).remote(
        party, job, parties, "127.0.0.1", 0, tls, allowlist, max_message, 4 * MIB, limits=limits,
        job_secret=job_secret,
    )
    return actor, ray.get(actor.start.remote())


def start_sender(party: str, job: str, addresses: dict[str, int], tls: Any = None,
                 **comm: Any):
    """A SenderProxy actor for `party` reaching peers at 127.0.0.1:<port>."""
    import ray

    from fed.transport.sender import SenderProxy

    settings = {
        "timeout_in_ms": 20000, "chunk_size_in_bytes": 4 * MIB,
        "messages_max_size_in_bytes": None, "expose_error_trace": False,
        "peer_timeout_s": 10.0, "startup_timeout_s": 30.0, "connections_per_peer": 2,
    }
    settings.update(comm)
    book = {p: ("127.0.0.1", port) for p, port in addresses.items()}
    book.setdefault(party, ("127.0.0.1", 1))
    return ray.remote(SenderProxy).options(num_cpus=0, max_concurrency=100).remote(
        party, job, book, tls, settings
    )


def actor_rss(actor) -> int:
    """Resident memory of the process hosting `actor`, in bytes."""
    import ray

    def rss(_self) -> int:
        import psutil

        return psutil.Process().memory_info().rss

    return ray.get(actor.__ray_call__.remote(rss))


def reset_peak_rss(actor) -> int:
    """Restart the peak resident memory (VmHWM) of the process hosting `actor` from its
    current RSS (Linux: /proc/self/clear_refs); return that RSS in bytes."""
    import ray

    def reset(_self) -> int:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

    return ray.get(actor.__ray_call__.remote(reset))


def peak_rss(actor) -> int:
    """The peak resident memory of the process hosting `actor` since its last reset."""
    import ray

    def peak(_self) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

    return ray.get(actor.__ray_call__.remote(peak))


def encode_map(body: dict) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def trickle(sock: socket.socket, data: bytes, every_s: float) -> int | None:
    """Send `data` one byte every `every_s` seconds (a slowloris); return how many bytes
    went out before the receiver closed the connection, None if it never did."""
    import select

    for i in range(len(data)):
        readable, _, _ = select.select([sock], [], [], every_s)
        if readable:
            try:
                if not sock.recv(65536):
                    return i
            except OSError:
                return i
        try:
            sock.sendall(data[i:i + 1])
        except OSError:
            return i
    return None


def client_hello(ca: str) -> bytes:
    """The first bytes of a TLS handshake (a ClientHello), to send as slowly as we like."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=ca)
    ctx.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=False)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def wait_until(predicate, timeout_s: float, every_s: float = 0.1) -> bool:
    """Poll `predicate` until it holds or `timeout_s` passes; return whether it held."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return bool(predicate())
