"""The webhook's own CA and serving certificate (`cryptography`), and when to renew them.

Pure functions of their inputs and `now`: `keeper` stores the result in a Secret and puts
`ca_bundle()` into the MutatingWebhookConfiguration.

* The serving certificate is renewed when a third of its validity is left, or when it no
  longer matches the CA or the wanted host names. Same CA: the caBundle does not change, so
  nothing has to wait for the API server to see a new one.
* The CA is renewed the same way (a third left), or at once when its Secret is emptied (a
  forced rotation). The CA it replaces stays in the bundle (`previous_ca`) for
  `PREVIOUS_CA_GRACE` (at most until it expires), so a replica still serving a certificate
  of the old CA keeps working while it catches up.

Kopf's own self-signed certificates need `certbuilder` (not installed in the operator
image) and are generated per process; a Secret shared by restarts and replicas and a
renewal before expiry need our own few lines anyway.
"""
from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from collections.abc import Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Keys of the Secret (PEM). tls.crt/tls.key follow the kubernetes.io/tls convention.
CA_CERT, CA_KEY, CERT, KEY, PREVIOUS_CA = "ca.crt", "ca.key", "tls.crt", "tls.key", "ca-previous.crt"
RENEW_FRACTION = 1 / 3
# Clock skew between the operator and the API server: certificates start a little earlier.
BACKDATE = datetime.timedelta(minutes=5)
# How long a replaced CA stays in the caBundle (at most until it expires): every replica
# re-reads the Secret within a minute and then serves a certificate of the new CA.
PREVIOUS_CA_GRACE = datetime.timedelta(minutes=10)


@dataclasses.dataclass(frozen=True)
class Policy:
    cert_validity: datetime.timedelta = datetime.timedelta(days=90)
    ca_validity: datetime.timedelta = datetime.timedelta(days=3650)


@dataclasses.dataclass(frozen=True)
class Bundle:
    """PEM texts; `repr` never shows the keys."""
    ca_cert: bytes
    ca_key: bytes = dataclasses.field(repr=False)
    cert: bytes
    key: bytes = dataclasses.field(repr=False)
    previous_ca: bytes = b""

    def to_data(self) -> dict[str, bytes]:
        data = {CA_CERT: self.ca_cert, CA_KEY: self.ca_key, CERT: self.cert, KEY: self.key}
        if self.previous_ca:
            data[PREVIOUS_CA] = self.previous_ca
        return data

    @classmethod
    def from_data(cls, data: Mapping[str, bytes]) -> Bundle | None:
        """The bundle a Secret holds, or None when it is empty or incomplete."""
        if not all(data.get(k) for k in (CA_CERT, CA_KEY, CERT, KEY)):
            return None
        return cls(data[CA_CERT], data[CA_KEY], data[CERT], data[KEY], data.get(PREVIOUS_CA) or b"")

    def ca_bundle(self, now: datetime.datetime) -> bytes:
        """What the API server must trust: the CA, and the previous one while it is valid
        and the new CA is younger than PREVIOUS_CA_GRACE."""
        issued = x509.load_pem_x509_certificate(self.ca_cert).not_valid_before_utc + BACKDATE
        keep = self.previous_ca and _valid_at(self.previous_ca, now) and now < issued + PREVIOUS_CA_GRACE
        return self.ca_cert + (self.previous_ca if keep else b"")


def _valid_at(pem: bytes, now: datetime.datetime) -> bool:
    cert = x509.load_pem_x509_certificate(pem)
    return cert.not_valid_before_utc <= now < cert.not_valid_after_utc


def _renew_at(cert: x509.Certificate) -> datetime.datetime:
    # Life as asked for: the back-dated start (clock skew) does not count.
    life = cert.not_valid_after_utc - cert.not_valid_before_utc - BACKDATE
    return cert.not_valid_after_utc - life * RENEW_FRACTION


def _due(cert: x509.Certificate, now: datetime.datetime) -> bool:
    return now >= _renew_at(cert) or now < cert.not_valid_before_utc


def renew_at(bundle: Bundle) -> datetime.datetime:
    """When the first of the CA and the serving certificate is due."""
    return min(_renew_at(x509.load_pem_x509_certificate(pem)) for pem in (bundle.ca_cert, bundle.cert))


def expiry(pem: bytes) -> str:
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _builder(subject: str, issuer: x509.Name, public: ec.EllipticCurvePublicKey,
             now: datetime.datetime, validity: datetime.timedelta) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer).public_key(public).serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + validity))


def new_ca(now: datetime.datetime, validity: datetime.timedelta) -> tuple[bytes, bytes]:
    key = _key()
    name = "mlflow-operator webhook CA"
    cert = (_builder(name, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key(),
                     now, validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def issue(ca_cert: bytes, ca_key: bytes, hosts: Sequence[str], now: datetime.datetime,
          validity: datetime.timedelta) -> tuple[bytes, bytes]:
    """A serving certificate for `hosts` (DNS names or IP addresses), signed by the CA."""
    ca = x509.load_pem_x509_certificate(ca_cert)
    signer = serialization.load_pem_private_key(ca_key, password=None)
    assert isinstance(signer, ec.EllipticCurvePrivateKey)
    key = _key()
    # Never outlive the CA: a certificate its issuer no longer vouches for fails anyway.
    validity = min(validity, ca.not_valid_after_utc - now)
    cert = (_builder(hosts[0], ca.subject, key.public_key(), now, validity)
            .add_extension(_san(hosts), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
            .sign(signer, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def _matches(bundle: Bundle, hosts: Sequence[str]) -> bool:
    """The serving certificate is the CA's and names exactly `hosts`."""
    ca = x509.load_pem_x509_certificate(bundle.ca_cert)
    cert = x509.load_pem_x509_certificate(bundle.cert)
    try:
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return set(san) == set(_san(hosts))


def plan(current: Bundle | None, hosts: Sequence[str], now: datetime.datetime, policy: Policy,
         force: bool = False) -> Bundle:
    """`current` if it is good for a while yet, else a renewed bundle; `force`: a new CA
    and certificate now (the current CA stays trusted for `PREVIOUS_CA_GRACE`)."""
    try:
        ca_ok = not force and current is not None \
            and not _due(x509.load_pem_x509_certificate(current.ca_cert), now)
        cert_ok = ca_ok and current is not None and _matches(current, hosts) \
            and not _due(x509.load_pem_x509_certificate(current.cert), now)
    except ValueError:  # unreadable PEM: start over
        ca_ok = cert_ok = False
        current = None
    if current is not None and cert_ok:
        return current
    if current is not None and ca_ok:
        ca_cert, ca_key, previous = current.ca_cert, current.ca_key, current.previous_ca
    else:
        ca_cert, ca_key = new_ca(now, policy.ca_validity)
        old = current.ca_cert if current is not None else b""
        previous = old if old and _valid_at(old, now) else b""
    cert, key = issue(ca_cert, ca_key, hosts, now, policy.cert_validity)
    return Bundle(ca_cert, ca_key, cert, key, previous)
