"""Certificate paths to the deployment's trust anchors, and who a certificate speaks for.

Choice of validator: path building, signature checks of each link, name chaining, validity,
basicConstraints/pathLen, keyUsage keyCertSign on issuers, name constraints and DER strictness come
from ``cryptography.x509.verification`` (``PolicyBuilder``, RFC 5280 + CA/B web PKI profile) and are
not re-implemented here. Its stock end-entity profile is a TLS one (it requires a SAN and checks
the EKU of the verifier type), which is wrong for a JWS signing certificate, so the end-entity
profile is ``webpki_defaults_ee()`` with three rules replaced: SAN may be absent, keyUsage must
carry digitalSignature (required for signing, checked when present otherwise), and the
extendedKeyUsage rule follows ``purpose`` (clientAuth / serverAuth when present, none for signing).
The CA profile is ``webpki_defaults_ca()`` with its EKU rule following ``purpose`` too, so a
``client_auth`` verifier does not refuse a serverAuth-only intermediate on a ``server_auth`` check.
``build_client_verifier`` is used for every purpose: with custom extension policies its only
client-specific behaviour (EKU) is the one replaced; host names are TLS's business, not ours.

Before the library runs, cheap explicit checks (validity of every presented certificate at
``now``, chain order, CA-as-leaf, key size, key and extended key usage, an issuer among the anchors)
produce the precise reasons people read; the library remains the authority. Those rules and the
extension policies live in :mod:`gateway.crypto.pki_rules`. Known limit of the
library profile: issuing CAs with Ed25519 keys are refused (leaf Ed25519 keys are fine).

Revocation: a :class:`gateway.crypto.revocation.Revocations` given to :class:`TrustAnchors` is
checked on every path it validates (leaf and intermediates, against their issuers' CRLs); see
that module for what a configured CRL must be and what "revoked" means.

Pure: no I/O, no clock (``now`` is a parameter and must be timezone-aware), no logging.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, NamedTuple, TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import (
    PolicyBuilder,
    Store,
    VerificationError,
)

from gateway.crypto.keys import KeyInvalid, PublicKey, jwk_thumbprint
from gateway.crypto.pki_rules import (
    MAX_CHAIN_LENGTH,
    ChainInvalid,
    Purpose,
    check_leaf_key,
    extension,
    name_of,
    policies,
    precheck,
    require_aware,
)
from gateway.crypto.revocation import Revocations

__all__ = [
    "MAX_CHAIN_LENGTH",
    "PARTICIPANT_ID_RE",
    "PARTICIPANT_URI_PREFIX",
    "CacheInfo",
    "ChainInvalid",
    "Purpose",
    "TrustAnchors",
    "ValidatedChain",
    "decode_x5c",
    "fingerprint_sha256",
    "is_ca",
    "name_of",
    "participant_id",
    "verify_chain",
]

Certificate: TypeAlias = x509.Certificate  # for modules that may not import cryptography
PARTICIPANT_URI_PREFIX: Final = "urn:gateway:participant:"
#: Lowercase dotted labels (``hcm.quan-1``, ``central.dan-cu``); compared exactly, never folded.
PARTICIPANT_ID_RE: Final = re.compile(
    r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?)*"
)
_PURPOSE_LIST: Final[tuple[Purpose, ...]] = ("signing", "client_auth", "server_auth")


@dataclass(frozen=True, slots=True, eq=False)
class ValidatedChain:
    """A chain that passed validation: what was presented, the path built, and when it holds.

    ``not_before``/``not_after`` bound the validity of every certificate of ``path`` (anchor
    included), so a cached result is re-checked against any ``now`` in O(1).
    """

    chain: tuple[x509.Certificate, ...]
    path: tuple[x509.Certificate, ...]
    leaf_key: PublicKey
    kid: str
    not_before: datetime
    not_after: datetime

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


class CacheInfo(NamedTuple):
    hits: int
    misses: int
    currsize: int
    maxsize: int


class TrustAnchors:
    """The deployment's root (or pinned intermediate) CA certificates, and a cache of good chains.

    Why a cache here: every signed request carries the same few chains; validating one costs
    tens of microseconds to milliseconds, a dictionary lookup costs nothing. Entries are keyed by
    purpose and the SHA-256 of the exact ``x5c`` strings, live in a bounded LRU, hold only
    successes, and are re-checked against ``now`` on every hit (a miss re-validates fully and so
    reports the precise reason). Thread-safe: verification may run in executor threads.

    ``revocations`` (the CRLs, fixed for this object's lifetime) are checked by
    :meth:`validate`; the cache lives in the same object, so no cached verdict predates them.
    """

    def __init__(
        self,
        certs: Sequence[x509.Certificate],
        *,
        intermediates: Sequence[x509.Certificate] = (),
        revocations: Revocations | None = None,
        cache_size: int = 1024,
    ) -> None:
        if not certs:
            raise KeyInvalid("at least one trust anchor certificate is required")
        for cert in certs:
            if not is_ca(cert):
                raise KeyInvalid(f"trust anchor {name_of(cert)} is not a CA certificate")
        for cert in intermediates:
            if not is_ca(cert):
                raise KeyInvalid(f"intermediate {name_of(cert)} is not a CA certificate")
        self._certs = tuple(certs)
        # Untrusted: only used to complete the path of a lone TLS client certificate.
        self._intermediates = tuple(intermediates)
        self._revocations = revocations or Revocations()
        self._subjects = frozenset(cert.subject for cert in certs)
        store = Store(list(certs))
        self._builders: dict[str, PolicyBuilder] = {}
        for purpose in _PURPOSE_LIST:
            ca, ee = policies(purpose)
            self._builders[purpose] = (
                PolicyBuilder()
                .store(store)
                .max_chain_depth(MAX_CHAIN_LENGTH)
                .extension_policies(ca_policy=ca, ee_policy=ee)
            )
        self._cache: OrderedDict[tuple[str, bytes], ValidatedChain] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    @property
    def certs(self) -> tuple[x509.Certificate, ...]:
        return self._certs

    @property
    def revocations(self) -> Revocations:
        return self._revocations

    def without_revocations(self) -> TrustAnchors:
        """The same anchors with no CRL: for offline verification, which weighs revocation
        dates against signing times itself instead of refusing every revoked chain."""
        return TrustAnchors(self._certs, intermediates=self._intermediates)

    def cache_info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self._hits, self._misses, len(self._cache), self._cache_size)

    def validate(
        self, chain: Sequence[x509.Certificate], *, now: datetime, purpose: Purpose
    ) -> ValidatedChain:
        """Validate ``chain`` (leaf first) at ``now`` for ``purpose``, uncached; or ChainInvalid."""
        require_aware(now)
        if purpose not in self._builders:
            raise ValueError(f"unknown purpose {purpose!r}")
        chain = tuple(chain)
        try:
            precheck(chain, now, purpose, self._subjects, self._certs)
            leaf_key = check_leaf_key(chain[0])
            verifier = self._builders[purpose].time(now).build_client_verifier()
            path = tuple(verifier.verify(chain[0], list(chain[1:])).chain)
        except VerificationError as exc:
            raise ChainInvalid(
                f"the chain of {name_of(chain[0])} was refused by path validation against the "
                f"trust anchors: {exc}"
            ) from exc
        except (ValueError, UnsupportedAlgorithm) as exc:
            # cryptography parses a certificate's key, names and extensions lazily, on first
            # use: a DER that loaded can still hold a point off its curve or an unknown curve
            # (an x5c altered in transit). That is a refused chain, not an internal error.
            raise ChainInvalid(f"a certificate of the chain is malformed: {exc}") from exc
        self._revocations.check(path)
        return ValidatedChain(
            chain=chain,
            path=path,
            leaf_key=leaf_key,
            kid=jwk_thumbprint(leaf_key),
            not_before=max(cert.not_valid_before_utc for cert in path),
            not_after=min(cert.not_valid_after_utc for cert in path),
        )

    def validate_x5c(self, x5c: object, *, now: datetime, purpose: Purpose) -> ValidatedChain:
        """Decode and validate a JWS ``x5c`` header value, using and filling the cache."""
        require_aware(now)
        return self._cached(
            (purpose, _x5c_digest(x5c)),
            now,
            lambda: self.validate(decode_x5c(x5c), now=now, purpose=purpose),
        )

    def validate_leaf_der(self, der: bytes, *, now: datetime, purpose: Purpose) -> ValidatedChain:
        """Validate a lone certificate (DER), completing its path from the intermediates.

        For TLS client certificates: Python's ``ssl`` (before 3.13) gives the application only
        the peer's leaf, even when the handshake verified a longer chain, so the path to an
        anchor is rebuilt here from the configured intermediates (untrusted: each link is still
        checked by path validation). Cached like :meth:`validate_x5c`, by the DER's SHA-256.
        """
        require_aware(now)

        def compute() -> ValidatedChain:
            try:
                leaf = x509.load_der_x509_certificate(der)
            except ValueError as exc:
                raise ChainInvalid(f"not a DER X.509 certificate: {exc}") from exc
            return self.validate(self._path_from_pool(leaf), now=now, purpose=purpose)

        return self._cached((purpose, b"der" + hashlib.sha256(der).digest()), now, compute)

    def _path_from_pool(self, leaf: x509.Certificate) -> tuple[x509.Certificate, ...]:
        """``leaf`` followed by the intermediates that issued it, up to an anchor's child.

        A candidate is taken only when it really signed the certificate below it, so a pool
        with two CAs of the same name (a renewal) still yields the right link. Stops at an
        anchor-issued certificate, at a dead end, or at MAX_CHAIN_LENGTH; validation then
        accepts the path or says why not.
        """
        chain = [leaf]
        while chain[-1].issuer not in self._subjects and len(chain) < MAX_CHAIN_LENGTH:
            child = chain[-1]
            for ca in self._intermediates:
                if ca.subject != child.issuer or ca in chain:
                    continue
                try:
                    child.verify_directly_issued_by(ca)
                except (ValueError, TypeError, InvalidSignature):
                    continue
                chain.append(ca)
                break
            else:
                break
        return tuple(chain)

    def _cached(
        self, key: tuple[str, bytes], now: datetime, compute: Callable[[], ValidatedChain]
    ) -> ValidatedChain:
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
        if hit is not None and hit.not_before <= now <= hit.not_after:
            with self._lock:
                self._hits += 1
            return hit
        result = compute()
        with self._lock:
            self._misses += 1
            self._cache[key] = result
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result


def _x5c_digest(x5c: object) -> bytes:
    if not isinstance(x5c, list) or not all(isinstance(item, str) for item in x5c):
        raise ChainInvalid("x5c must be a list of base64 strings")
    digest = hashlib.sha256()
    for item in x5c:  # length-prefixed: no two different lists share a digest input
        data = item.encode("utf-8")
        digest.update(len(data).to_bytes(4, "big"))
        digest.update(data)
    return digest.digest()


def decode_x5c(x5c: object) -> tuple[x509.Certificate, ...]:
    """Parse an RFC 7515 ``x5c`` value: a non-empty list of standard-base64 DER certificates."""
    if not isinstance(x5c, list) or not x5c:
        raise ChainInvalid("x5c must be a non-empty list of base64 DER certificates")
    if len(x5c) > MAX_CHAIN_LENGTH:
        raise ChainInvalid(f"x5c has {len(x5c)} certificates; at most {MAX_CHAIN_LENGTH}")
    chain = []
    for position, item in enumerate(x5c):
        if not isinstance(item, str):
            raise ChainInvalid(f"x5c[{position}] is not a string")
        try:
            der = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ChainInvalid(f"x5c[{position}] is not standard base64: {exc}") from exc
        try:
            chain.append(x509.load_der_x509_certificate(der))
        except ValueError as exc:
            raise ChainInvalid(f"x5c[{position}] is not a DER X.509 certificate: {exc}") from exc
    return tuple(chain)


def verify_chain(
    chain: Sequence[x509.Certificate], anchors: TrustAnchors, *, now: datetime, purpose: Purpose
) -> x509.Certificate:
    """The leaf of ``chain`` (leaf first) if it leads to an anchor, else ChainInvalid."""
    return anchors.validate(chain, now=now, purpose=purpose).leaf


def participant_id(cert: x509.Certificate) -> str | None:
    """The participant a certificate speaks for: its subject CN, if that is a participant id.

    A SAN URI ``urn:gateway:participant:<id>``, when present, must name the same participant;
    a disagreement (or two different URIs, or two CNs) raises ChainInvalid, because a certificate
    that names two identities must not authenticate either. None: the certificate names no
    participant (a CA, for instance).
    """
    try:  # parsed lazily, and path validation does not decode names: a CA may sign bad DER
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError as exc:
        raise ChainInvalid(f"certificate has a malformed subject: {exc}") from exc
    if len(cns) > 1:
        raise ChainInvalid(f"certificate {name_of(cert)} has several common names")
    cn = cns[0].value if cns else None
    cn_id = cn if isinstance(cn, str) and PARTICIPANT_ID_RE.fullmatch(cn) else None
    san = extension(cert, x509.SubjectAlternativeName)
    uris: set[str] = set()
    if san is not None:
        uris = {
            uri[len(PARTICIPANT_URI_PREFIX) :]
            for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
            if uri.startswith(PARTICIPANT_URI_PREFIX)
        }
    if len(uris) > 1:
        raise ChainInvalid(
            f"certificate {name_of(cert)} names several participants: {sorted(uris)}"
        )
    if uris and (uri_id := uris.pop()) != cn_id:
        raise ChainInvalid(
            f"certificate {name_of(cert)}: SAN {PARTICIPANT_URI_PREFIX}{uri_id} disagrees with "
            f"the subject CN {cn!r}"
        )
    return cn_id


def is_ca(cert: x509.Certificate) -> bool:
    """Whether ``cert`` has basicConstraints CA=true (ChainInvalid if its extensions are bad)."""
    bc = extension(cert, x509.BasicConstraints)
    return bc is not None and bc.ca


def fingerprint_sha256(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lowercase hex (as openssl -fingerprint, no colons)."""
    return cert.fingerprint(hashes.SHA256()).hex()
