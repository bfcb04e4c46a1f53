package api

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/hyperroot/hyperroot/internal/atomicfile"
)

// The network listener's certificate is the appliance's own, made at its
// first start and kept in a directory: a self-signed ECDSA P-256
// certificate that clients pin by its SHA-256 fingerprint (the console
// prints it), since an appliance's address comes from DHCP and no CA
// vouches for it.

const (
	certFile = "api-cert.pem"
	keyFile  = "api-key.pem"
)

// certValidity is long: the certificate is pinned, not trusted for its
// dates, and an appliance's clock may be wrong at boot.
const certValidity = 20 * 365 * 24 * time.Hour

// LoadOrCreateCert returns the certificate kept in dir, or makes one (for
// hosts: names and IP addresses) and keeps it there when dir holds none.
// made says whether it is new; a pair that cannot be read is replaced, and
// why is in replaced.
func LoadOrCreateCert(dir string, hosts []string) (cert tls.Certificate, made bool, replaced error, err error) {
	cert, err = tls.LoadX509KeyPair(filepath.Join(dir, certFile), filepath.Join(dir, keyFile))
	if err == nil {
		return cert, false, nil, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		replaced = err
	}
	certPEM, keyPEM, err := newCert(hosts, time.Now())
	if err != nil {
		return tls.Certificate{}, false, nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tls.Certificate{}, false, nil, err
	}
	// The key first: a pair is only read when both are there, and a
	// crash between the two leaves a key without its certificate,
	// which the next start replaces.
	if err := atomicfile.Write(filepath.Join(dir, keyFile), keyPEM, 0o600); err != nil {
		return tls.Certificate{}, false, nil, err
	}
	if err := atomicfile.Write(filepath.Join(dir, certFile), certPEM, 0o644); err != nil {
		return tls.Certificate{}, false, nil, err
	}
	cert, err = tls.X509KeyPair(certPEM, keyPEM)
	return cert, true, replaced, err
}

// newCert makes a self-signed certificate for hosts.
func newCert(hosts []string, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "hyperroot management API"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// Fingerprint is how a certificate (DER) is pinned: "sha256:" and the hex
// of its SHA-256.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:])
}
